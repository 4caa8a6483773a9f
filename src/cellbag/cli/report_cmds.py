"""The `report` command: a static HTML report of a cv run."""

from __future__ import annotations

from pathlib import Path

import typer

from cellbag.cli.app import app, console


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(
        ..., help="A `cellbag cv --out` run folder (or one head's folder)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (index.html + images)."),
    store: str | None = typer.Option(
        None,
        "--store",
        help="The run's feature store: adds encoder details and look-alike cells of "
        "misclassified patients (retrieval).",
    ),
    top_k: int = typer.Option(
        8, "--top-k", min=1, help="Cells shown per patient at each end of the attention ranking."
    ),
    neighbors: int = typer.Option(
        5, "--neighbors", min=1, help="Look-alike cells shown per query cell."
    ),
    screenshot: Path | None = typer.Option(
        None, "--screenshot", help="Also save a PNG screenshot of the page (needs chromium)."
    ),
) -> None:
    """Write an offline HTML report: metrics with intervals, ROC, confusion, per-patient
    predictions with top/bottom-attention cell galleries, look-alikes of misclassified patients."""
    from cellbag.report import write_report

    with console.status("Writing the report") as status:
        index = write_report(
            run_dir,
            out,
            store=store,
            top_k=top_k,
            n_neighbors=neighbors,
            progress=lambda msg: status.update(f"Report: {msg}"),
        )
    console.print(f"Report written: [bold]{index}[/]")
    if screenshot is not None:
        from cellbag.report.browser import screenshot as shoot

        console.print(f"Screenshot: [bold]{shoot(index, screenshot)}[/]")
