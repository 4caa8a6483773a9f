"""Retrieval commands: `index` (build a cell index) and `neighbors` (most similar cells)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cellbag.cli.app import app, console, deprecated, err_console, fail, next_step, shell_path


@contextmanager
def _notices():
    """Show retrieval warnings (stale index rebuilt, fewer hits than k) as notices."""
    from cellbag.retrieval import RetrievalWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RetrievalWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, RetrievalWarning):
                    err_console.print(
                        f"[yellow]notice:[/] {w.message}", highlight=False, soft_wrap=True
                    )
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _open(store_path: str) -> Any:
    from cellbag.store import Store

    return Store.open(store_path, mode="r")


@app.command("index")
def index_cmd(
    store: str = typer.Argument(..., help="Feature store (a path or an fsspec URL)."),
    encoder: str | None = typer.Option(
        None, "--encoder", "-e", help="Encoder id or name (default: the store's only encoder)."
    ),
    kind: str = typer.Option(
        "auto",
        "--kind",
        help="auto (exact up to 50,000 cells, IVF above), flat (exact), ivf or hnsw.",
    ),
    nlist: int | None = typer.Option(None, help="IVF lists (default: sqrt(n))."),
    nprobe: int | None = typer.Option(
        None, help="IVF lists scanned a query (default: nlist/64, at least 8)."
    ),
    ef_search: int | None = typer.Option(
        None, "--ef-search", help="HNSW beam width (default 128)."
    ),
    threads: int | None = typer.Option(None, help="faiss threads (default: the usable cores)."),
    seed: int = typer.Option(0, help="Seed of the IVF training sample and k-means."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build the cosine-similarity index of one encoder (ok cells only) and save it beside the store.

    \b
    Examples:
      cellbag index demo_out/store.zarr
      cellbag index store.zarr --encoder ENCODER_ID --kind hnsw --ef-search 256
    """
    from cellbag.retrieval import KINDS, build_index
    from cellbag.retrieval.query import resolve_encoder

    if kind not in KINDS:
        fail(f"unknown --kind {kind!r}: choose one of {', '.join(KINDS)}")
    overrides = {
        k: v for k, v in {"nlist": nlist, "nprobe": nprobe, "ef_search": ef_search}.items() if v
    }
    s = _open(store)
    enc = resolve_encoder(s, encoder)
    from cellbag.core.progress import progress_bar

    with progress_bar("vectors", enabled=not quiet, console=err_console) as prog:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "sampling + k-means" if stage == "train" else "adding vectors"
                tasks[stage] = prog.add_task(label, total=total)
            prog.update(tasks[stage], completed=done, total=total)

        index = build_index(s, enc, kind, seed=seed, threads=threads, progress=report, **overrides)
    from cellbag.retrieval import index_dir

    params = ", ".join(f"{k}={v}" for k, v in index.params.to_dict().items() if k != "kind")
    console.print(
        f"[bold]{index.kind}[/] index of {enc}: {index.n:,} cells, dim {index.dim}"
        + (f" ({params})" if params else "")
        + f", built in {index.meta['build_seconds']:.1f} s, {index.nbytes / 2**20:.1f} MiB"
        + f" -> {index_dir(s, enc)}",
        highlight=False,
        soft_wrap=True,
    )
    first = s.cells()["cell_id"].iloc[0]
    next_step(
        f"cellbag neighbors {shell_path(store)} --encoder {enc} --cell {shell_path(first)} "
        "--html neighbors.html"
    )


@app.command("neighbors")
def neighbors_cmd(
    store: str = typer.Argument(..., help="Feature store (a path or an fsspec URL)."),
    encoder: str | None = typer.Option(
        None, "--encoder", "-e", help="Encoder id or name (default: the store's only encoder)."
    ),
    cell: str | None = typer.Option(None, "--cell", help="Query cell id, e.g. P26/000012.jpg."),
    image: Path | None = typer.Option(
        None, "--image", help="Query image file (embedded with the store's encoder)."
    ),
    k: int = typer.Option(10, "--neighbors", "-k", min=1, help="How many neighbours."),
    other_patients: bool = typer.Option(
        False, "--other-patients", help="Exclude the query's own patient."
    ),
    split: str = typer.Option("all", help="Keep cells of one split: train, test or all."),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML page."),
    montage_png: Path | None = typer.Option(None, "--montage", help="Write a montage PNG."),
    no_rebuild: bool = typer.Option(
        False, "--no-rebuild", help="Refuse a stale index instead of rebuilding it."
    ),
    threads: int | None = typer.Option(None, help="faiss threads (default: the usable cores)."),
    k_old: int | None = typer.Option(None, "--k", hidden=True),
) -> None:
    """Show the cells most similar to a cell of the store or to a new image.

    \b
    Examples:
      cellbag neighbors demo_out/store.zarr --cell P1/000003.jpg --neighbors 20 \\
          --other-patients
      cellbag neighbors store.zarr --image new_cell.jpg -k 12 \\
          --html look_alikes.html
    """
    from cellbag.retrieval import Retriever, html_page, label_name, montage

    k = deprecated(k, k_old, "--k", "--neighbors")
    if (cell is None) == (image is None):
        fail("give exactly one of --cell CELL_ID or --image PATH")
    if split not in ("all", "train", "test"):
        fail(f"unknown --split {split!r}: choose train, test or all")
    s = _open(store)
    with _notices():
        retriever = Retriever(
            s, encoder, on_stale="error" if no_rebuild else "rebuild", threads=threads
        )
        df = retriever.query(
            cell_id=cell, image=image, k=k, other_patients=other_patients, split=split
        )
    q = df.attrs["query"]
    what = q["cell_id"] if q["kind"] == "cell" else str(image)
    t = Table(
        title=f"{len(df)} nearest cells to {what} "
        f"({retriever.encoder_id}, {retriever.index.kind} index)",
        title_justify="left",
    )
    for col, just in [
        ("rank", "right"),
        ("cell id", "left"),
        ("patient", "left"),
        ("split", "left"),
        ("label", "left"),
        ("similarity", "right"),
        ("path", "left"),
    ]:
        t.add_column(col, justify=just, overflow="fold", no_wrap=col != "path")
    for r in df.itertuples(index=False):
        t.add_row(
            str(r.rank),
            r.cell_id,
            r.patient_id,
            r.split,
            label_name(r.label),
            f"{r.similarity:.4f}",
            r.path,
        )
    console.print(t)
    if (montage_png or html) and not df["path"].fillna("").astype(str).str.len().any():
        console.print("[yellow]note:[/] these cells have no images (imported features)")
    if montage_png is not None:
        console.print(f"montage -> {montage(df, montage_png)}", highlight=False)
    if html is not None:
        console.print(f"html page -> {html_page(df, html)}", highlight=False)
        next_step(f"open {shell_path(html)} in a browser")
    elif len(df):
        next_step(
            f"cellbag neighbors {shell_path(store)} --cell {shell_path(df['cell_id'].iloc[0])} "
            f"--neighbors {k} --html neighbors.html"
        )
