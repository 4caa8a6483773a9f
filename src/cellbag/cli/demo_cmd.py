"""`cellbag demo`: the whole workflow on the built-in demo cohort, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cellbag.cli.app import app, console, next_step, shell_path

DEMO_HEADS = "meanpool,abmil,transformer,lgbm,svm,ensemble"


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(
        Path("demo_out"),
        "--out",
        "-o",
        help="Folder for the cohort, the store, the runs and the report.",
    ),
    patients: int = typer.Option(
        60, min=4, help="Demo patients in all (a fifth go to the test split)."
    ),
    cells_per_patient: int = typer.Option(40, min=1, help="Cells per patient (about)."),
    seed: int = typer.Option(0, help="Seed for the cohort and the cross-validation."),
    encoder: str = typer.Option(
        "tf_efficientnet_lite0", help="Encoder (offline default: package weights)."
    ),
    heads: str = typer.Option(DEMO_HEADS, help="Comma-separated aggregator heads to compare."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds."),
    repeats: int = typer.Option(3, min=1, help="Cross-validation repeats."),
    report: bool = typer.Option(
        True, "--report/--no-report", help="Write the HTML report at the end."
    ),
) -> None:
    """Demo cohort -> featurize (offline encoder) -> cross-validate heads -> HTML report.

    \b
    Examples:
      cellbag demo
      cellbag demo --out demo_small --patients 20 --cells-per-patient 16 \\
          --folds 3 --repeats 1
    """
    from cellbag.data.demo import make_demo_cohort
    from cellbag.evaluate import run_cv
    from cellbag.featurize import run_featurize

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "trainset" / "trainset_true.csv").is_file():
        with console.status(
            f"[1/4] drawing a demo cohort: {patients} patients × ~{cells_per_patient} cells"
        ):
            make_demo_cohort(
                data, patients=patients, cells_per_patient=cells_per_patient, seed=seed
            )
    console.print(f"[1/4] demo cohort: {data}")
    store_path = out / "store.zarr"
    console.print(f"[2/4] featurizing with {encoder} -> {store_path}")
    rep = run_featurize(data, store_path, encoder, progress=True)
    console.print(
        f"      encoder id [bold]{rep.encoder_id}[/]: {rep.cells_computed} cells computed"
        + (f" at {rep.cells_per_s:.1f} cells/s" if rep.cells_computed else " (cached)")
    )
    run_dir = out / "runs" / rep.encoder_id
    console.print(
        f"[3/4] cross-validating {heads} ({folds} folds × {repeats} repeats, with clinical) -> {run_dir}"
    )
    run_cv(
        rep.store,
        rep.encoder_id,
        [h.strip() for h in heads.split(",") if h.strip()],
        run_dir,
        clinical=True,
        folds=folds,
        repeats=repeats,
        seed=seed,
        console=console,
    )
    from cellbag.report.leaderboard import collect, write_leaderboard

    board = write_leaderboard(collect([run_dir.parent]), run_dir.parent / "leaderboard.html")
    if report:
        from cellbag.report import write_report

        index = write_report(run_dir, out / "report", store=rep.store, show_progress=True)
        console.print(f"[4/4] report: [bold]{index}[/]")
    console.print(
        f"Done in {time.perf_counter() - t0:.0f} s. Runs: {run_dir}; leaderboard: {board}"
    )
    if report:
        next_step(
            f"open {shell_path(out / 'report' / 'index.html')} in a browser; then your own "
            "cohort: cellbag inspect DATA"
        )
    else:
        next_step(f"cellbag report {shell_path(run_dir)} --store {shell_path(rep.store.path)}")
