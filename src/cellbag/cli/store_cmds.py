"""`store import` and `store export-h5`: features in from other MIL tools, and out to them."""

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
      cellbag store import clam_features/ store.zarr --labels labels.csv \\
          --name uni
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
    if n_train == 0:
        console.print("[yellow]note:[/] no labels: every patient is a test patient (--labels)")
    next_step(
        f"cellbag cv {shell_path(store)} --encoder {eid} --head meanpool,abmil,lgbm "
        f"--out {shell_path(f'runs/{eid}')}"
    )


@store_app.command("export-h5")
def store_export_cmd(
    store: str = typer.Argument(..., help="Feature store (a folder or an fsspec URL)."),
    out_dir: Path = typer.Argument(..., help="Output folder."),
    encoder: str = typer.Option(
        None,
        "--encoder",
        "-e",
        help="Encoder id or name (see `cellbag store info`; default: the store's only one).",
    ),
    layout: str = typer.Option(
        "cellbag",
        "--layout",
        help="cellbag | clam (h5_files/, pt_files/, dataset.csv) | trident | stamp "
        "(feats + clini.csv, slide.csv).",
    ),
    with_paths: bool = typer.Option(
        False, "--with-paths", help="Also record this machine's paths (store, weights file)."
    ),
) -> None:
    """Write one HDF5 file per patient in the layout CLAM, TRIDENT or STAMP read (+ labels.csv).

    Cells have no position on a slide: `coords` is (index in the bag, 0) unless the store
    holds imported positions. `cellbag store import OUT` reads any layout back.

    \b
    Examples:
      cellbag store export-h5 demo_out/store.zarr h5/
      cellbag store export-h5 store.zarr clam/ --layout clam \\
          -e tf_efficientnet_lite0
    """
    from cellbag.store import Store, export_h5

    s = Store.open(store)
    files = export_h5(s, encoder, out_dir, layout=layout, with_paths=with_paths)
    console.print(f"wrote {len(files)} files ({layout} layout) to {out_dir}", highlight=False)
    feats = "feats" if layout == "stamp" else "features"
    where = f"{shell_path(out_dir)}/h5_files" if layout == "clam" else shell_path(out_dir)
    next_step(f"read {where}/<patient>.h5 with h5py (datasets `{feats}`, `coords`, `cell_ids`)")
