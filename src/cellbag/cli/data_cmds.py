"""Data commands: `inspect` and `demo-data`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import typer
from rich.table import Table

from cellbag.cli.app import app, console, deprecated, next_step, shell_path, suggested_store


@app.command("inspect")
def inspect_cmd(
    data: Path = typer.Argument(..., help="Cohort: a challenge-layout folder or a manifest CSV."),
    clinical_csv: Path | None = typer.Option(
        None,
        "--clinical-csv",
        help="Clinical CSV for a manifest (default: clinical.csv beside it).",
    ),
    check_images: bool = typer.Option(
        False, "--check-images", help="Decode every image and list unreadable ones."
    ),
    clinical_old: Path | None = typer.Option(None, "--clinical", hidden=True),
) -> None:
    """Summarise a cohort: patients per split and label, class balance, bag sizes, clinical
    ranges, unlabeled patients, missing clinical data and other problems.

    \b
    Examples:
      cellbag inspect demo_out/data
      cellbag inspect cohort/manifest.csv --clinical-csv cohort/clinical.csv \\
          --check-images
    """
    from cellbag.data import read_cohort
    from cellbag.data.inspect import check_images as _check
    from cellbag.data.inspect import summarize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = read_cohort(
            data, deprecated(clinical_csv, clinical_old, "--clinical", "--clinical-csv")
        )
    extra = _check(cohort) if check_images else []
    s = summarize(cohort, extra)
    console.print(
        f"[bold]{cohort.root}[/] ({cohort.layout} layout): {cohort.n_patients} patients, {cohort.n_cells} cells"
    )
    t = Table(title="Patients per split and label")
    t.add_column("split")
    for c in s.counts.columns:
        t.add_column(str(c), justify="right")
    t.add_column("cells/patient min / median / max", justify="right")
    for split, row in s.counts.iterrows():
        mn, md, mx = s.bag_sizes.get(split, (0, 0, 0))
        t.add_row(str(split), *[str(int(v)) for v in row], f"{mn} / {md:g} / {mx}")
    console.print(t)
    t = Table(title="Clinical values")
    for c in ("variable", "min", "median", "max", "missing"):
        t.add_column(c, justify="left" if c == "variable" else "right")
    for r in s.clinical.to_dict("records"):
        if isinstance(r.get("note"), str):
            t.add_row(r["variable"], "", r["note"], "", str(r["missing"]))
        else:
            # a variable no patient has prints a dash, not nan
            vals = ("—" if math.isnan(r[k]) else f"{r[k]:.1f}" for k in ("min", "median", "max"))
            t.add_row(r["variable"], *vals, str(r["missing"]))
    console.print(t)
    if s.balance:
        console.print(f"class balance (labelled training patients): {s.balance}", highlight=False)
    found = [*s.findings, *map(str, s.problems)]
    if found:
        console.print(f"[bold yellow]{len(found)} problem(s) found:[/]")
        for p in found:
            console.print(f"  - {p}", highlight=False, soft_wrap=True)
    else:
        console.print("[green]No problems found.[/]")
    next_step(f"cellbag featurize {shell_path(data)} {suggested_store(data)}")


@app.command("demo-data")
def demo_data_cmd(
    out: Path = typer.Argument(..., help="Output folder (challenge layout)."),
    patients: int = typer.Option(
        60, "--patients", min=4, help="Patients in all (about a fifth go to the test split)."
    ),
    cells_per_patient: int = typer.Option(
        40, "--cells-per-patient", min=1, help="Cells per patient (bag sizes vary ±25%)."
    ),
    seed: int = typer.Option(0, help="Random seed (same seed, same cohort)."),
    preset: str = typer.Option(
        "default",
        "--preset",
        help="Cohort preset: default; fusion (images and clinical values each carry a "
        "partial signal); rare-key (2-6% key cells differing by nucleus shape, per-patient "
        "stain shift; key cells marked in ground_truth.csv's is_key).",
    ),
    preview: Path | None = typer.Option(
        None, help="Also write a contact sheet PNG of every cell type."
    ),
) -> None:
    """Write a synthetic cohort of smear crops with a known ground truth (OUT/ground_truth.csv).

    \b
    Examples:
      cellbag demo-data demo_data
      cellbag demo-data demo_data --patients 60 --cells-per-patient 80 \\
          --preview sheet.png
      cellbag demo-data rare_key --preset rare-key --patients 80
    """
    from cellbag.data.demo import PRESETS, contact_sheet, make_demo_cohort

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    with console.status(f"Drawing {patients} patients × ~{cells_per_patient} cells"):
        make_demo_cohort(
            out, patients=patients, cells_per_patient=cells_per_patient, seed=seed, preset=preset
        )
    console.print(
        f"Demo cohort written to [bold]{out}[/] (ground truth: {out / 'ground_truth.csv'})"
    )
    if preview is not None:
        contact_sheet(preview, seed=seed)
        console.print(f"Contact sheet: [bold]{preview}[/]")
    next_step(f"cellbag inspect {shell_path(out)}")
