"""The `report` command (a static HTML report of a cv run) and `runs` (the leaderboard)."""

from __future__ import annotations

from pathlib import Path

import typer

from cellbag.cli.app import app, console, deprecated, next_step, shell_path


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(
        ..., help="A `cellbag cv --out` run folder (or one head's folder)."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Report folder (index.html + images). Default: RUN_DIR/report."
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="The run's feature store: adds encoder details and look-alike cells of "
        "misclassified patients (retrieval).",
    ),
    cells: int = typer.Option(
        8, "--cells", min=1, help="Cells shown per patient at each end of its ranking."
    ),
    neighbors: int = typer.Option(
        5, "--neighbors", "-k", min=1, help="Look-alike cells shown per query cell."
    ),
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="A `cellbag predict` submission CSV: adds the predicted (test) patients and "
        "their galleries.",
    ),
    screenshot: Path | None = typer.Option(
        None, "--screenshot", help="Also save a PNG screenshot of the page (needs chromium)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    top_k_old: int | None = typer.Option(None, "--top-k", hidden=True),
) -> None:
    """Write an offline HTML report: metrics with intervals, ROC, confusion, per-patient
    predictions with cell galleries for every head (attention, per-cell contributions,
    argmax cells or cluster gains), look-alikes of misclassified patients.

    \b
    Examples:
      cellbag report runs/effnet --store demo_out/store.zarr \\
          --out runs/effnet/report
      cellbag report runs/effnet --predictions submission.csv --cells 12
    """
    from cellbag.report import write_report

    cells = deprecated(cells, top_k_old, "--top-k", "--cells")
    out = out if out is not None else run_dir / "report"
    index = write_report(
        run_dir,
        out,
        store=store,
        top_k=cells,
        n_neighbors=neighbors,
        predictions=predictions,
        show_progress=not quiet,
    )
    console.print(f"Report written: [bold]{index}[/]")
    if screenshot is not None:
        from cellbag.report.browser import screenshot as shoot

        console.print(f"Screenshot: [bold]{shoot(index, screenshot)}[/]")
    next_step(f"open {shell_path(index)} in a browser", _after_report(run_dir, store))


def _after_report(run_dir: Path, store: str | None) -> str:
    """Fit the best head of the run on every training patient."""
    from cellbag.report.leaderboard import best_head

    return _fit_line(best_head(run_dir), store)


def _fit_line(best: dict | None, store: str | None) -> str:
    """`cellbag fit` for a leaderboard row (the best head of a run, or of all runs): its
    thresholds (Youden's, and the triage point) from that run's out-of-fold predictions."""
    head = best["head"] if best else "HEAD"
    store = store or (best or {}).get("store") or "STORE"
    enc = f" --encoder {best['encoder_id']}" if best and best.get("encoder_id") else ""
    clin = " --no-clinical" if best and best.get("clinical") is False else ""
    run = shell_path(best["run"]) if best and best.get("run") else "RUN"
    return (
        f"cellbag fit {shell_path(store)}{enc} --head {head}{clin} "
        f"--cv-run {run} --threshold youden --out {shell_path(Path('models') / head)}"
    )


@app.command("runs")
def runs_cmd(
    dirs: list[Path] = typer.Argument(
        ..., help="Folders holding `cellbag cv` runs (searched a few levels deep)."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Leaderboard page (a CSV is written beside it). Default: DIR/leaderboard.html.",
    ),
    metric: str = typer.Option(
        "roc_auc",
        "--metric",
        help="Rank by this figure (default: ROC AUC, the one each run's best head is chosen by).",
    ),
) -> None:
    """Leaderboard across cv runs (encoders × heads × clinical), each metric with its interval:
    the quick answer to "which encoder and head should I use?". Reports written afterwards
    link to it.

    \b
    Examples:
      cellbag runs demo_out/runs
      cellbag runs runs/effnet runs/dinov2 --out leaderboard.html \\
          --metric balanced_accuracy
    """
    from rich.table import Table

    from cellbag.evaluate.stats import BEST_RULE
    from cellbag.report.cv_run import METRIC_NAMES
    from cellbag.report.leaderboard import collect, key_columns, rank, write_leaderboard

    table = rank(collect(dirs), metric)
    out = out if out is not None else dirs[0] / "leaderboard.html"
    page = write_leaderboard(table, out, metric)
    keys = key_columns(table, metric)
    t = Table(title=f"cv runs ranked by {METRIC_NAMES.get(metric, metric)}")
    for c in ("#", "run", "encoder", "head", "clinical"):
        t.add_column(c, overflow="fold")
    for k in keys:
        t.add_column(METRIC_NAMES.get(k, k), justify="right")  # value [95% interval]
    for i, r in table.iterrows():
        t.add_row(
            str(i + 1),
            Path(r["run"]).name,
            str(r["encoder_id"]) + (" (transductive)" if r.get("transductive") else ""),
            str(r["head"]),
            {True: "yes", False: "no"}.get(r["clinical"], "?"),
            *(f"{r[k]:.3f} [{r[f'{k}_lo']:.3f}, {r[f'{k}_hi']:.3f}]" for k in keys),
        )
    console.print(t)
    if table["transductive"].astype(bool).any():
        console.print(
            "transductive: the encoder was pretrained on the images of patients the run "
            "scores; those figures may be higher than on patients it never saw.",
            style="yellow",
        )
    console.print(
        f"Within a run the best head is {BEST_RULE}, as cv and the report say. A rank is no "
        "verdict: overlapping intervals mean no demonstrated difference.",
        style="dim",
    )
    console.print(
        f"leaderboard: [bold]{page}[/] (every figure; the table as {page.with_suffix('.csv').name})"
    )
    next_step(_fit_line(table.iloc[0].to_dict(), None))
