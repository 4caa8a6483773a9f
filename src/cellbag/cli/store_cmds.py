"""`store import` and `store export-h5`: features in from and out to other MIL tools."""

from __future__ import annotations

from pathlib import Path

import typer

from cellbag.cli.app import console, next_step, shell_path, store_app


@store_app.command("import")
def store_import_cmd(
    source: Path = typer.Argument(
        ...,
        help="A folder of <patient_id>.h5 (CLAM/TRIDENT `features`, STAMP `feats`) or a "
        "CSV/Parquet table, one row per instance (patient_id, f0, f1, ... [label, split]).",
    ),
    store: str = typer.Argument(..., help="The new feature store (a new or empty folder)."),
    labels: Path = typer.Option(
        None,
        "--labels",
        help="CSV: patient_id,label[,split] plus any clinical columns (gender, dob, "
        "lymph_count, others kept as clinical features).",
    ),
    name: str = typer.Option(
        "imported", "--name", help="Encoder name; the id is NAME-<digest of the features>."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing cellbag store."),
) -> None:
    """Import features made by another tool into a new store (cv, fit, predict work on it).

    \b
    Examples:
      cellbag store import clam_features/ store.zarr --labels labels.csv --name uni
      cellbag store import instances.parquet store.zarr --labels labels.csv
    """
    from cellbag.store.importer import import_features

    s = import_features(source, store, labels=labels, name=name, force=force)
    pts = s.patients()
    eid = s.encoders()[0]
    n_train = int((pts["split"] == "train").sum())
    console.print(
        f"imported {len(pts)} patients ({n_train} train, {len(pts) - n_train} test), "
        f"{s.n_cells} instances, dim {s.encoder_info(eid)['dim']} -> {s.path}",
        highlight=False,
    )
    console.print(f"encoder id: [bold]{eid}[/]", highlight=False)
    next_step(
        f"cellbag cv {shell_path(store)} --encoder {eid} --head meanpool,abmil,lgbm "
        f"--out {shell_path(f'runs/{eid}')}"
    )
