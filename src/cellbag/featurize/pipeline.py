"""Featurize a cohort into the store: decode in threads, embed in batches, write by block.

The work is cut into blocks of rows (see :mod:`cellbag.store.blocks`). Batches never
span two blocks, so a block's numbers do not depend on which other blocks were done
before: a resumed run equals an uninterrupted one. While the model runs on one batch,
worker threads decode the next ones, and a writer thread stores the previous block.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cellbag.data import Cohort, read_cohort
from cellbag.errors import CellbagError
from cellbag.featurize.images import Decoded, decode_file
from cellbag.featurize.registry import DEFAULT_ENCODER, Encoder, create_encoder
from cellbag.store import STATUS_UNREADABLE, Store, StoreError, chunks_for_rank


class FeaturizeError(CellbagError, RuntimeError):
    """Featurization cannot start or go on (names the store and the encoder)."""


@dataclass
class FeaturizeReport:
    """What one featurize run did."""

    store: Store
    encoder_id: str
    cells_computed: int = 0
    blocks_computed: int = 0
    blocks_skipped: int = 0
    seconds: float = 0.0
    complete: bool = False
    unreadable: pd.DataFrame = field(default_factory=pd.DataFrame)
    changed: list[str] = field(default_factory=list)
    took_over_lock: dict[str, Any] | None = None
    created_store: bool = False

    @property
    def cells_per_s(self) -> float:
        return self.cells_computed / self.seconds if self.seconds > 0 else 0.0


def default_workers(device: str) -> int:
    """Decode threads: one on a CPU (the model needs the cores), many beside a GPU."""
    n = os.cpu_count() or 1
    return max(1, min(32, n)) if device.startswith("cuda") else max(1, min(2, n // 2))


def open_or_create(
    data: Cohort | str | os.PathLike | None,
    store_path: str | os.PathLike,
    chunk_rows: int | None = None,
    block_rows: int | None = None,
) -> tuple[Store, bool]:
    """Open the store (checking it holds ``data``'s cohort) or create it from ``data``."""
    cohort = None
    if data is not None:
        cohort = data if isinstance(data, Cohort) else read_cohort(data)
    if Store.exists(store_path):
        store = Store.open(store_path, mode="r+")
        if cohort is not None and cohort.fingerprint() != store.fingerprint:
            raise FeaturizeError(
                f"{store.path}: store was made from another cohort "
                f"({store.attrs['cohort']['root']}, {store.attrs['cohort']['n_cells']} cells), "
                f"not {cohort.root} ({cohort.n_cells} cells); use a new store path"
            )
        return store, False
    if cohort is None:
        raise FeaturizeError(f"{store_path}: no store here, and no cohort given to create it")
    kw = {}
    if chunk_rows:
        kw["chunk_rows"] = chunk_rows
    if block_rows:
        kw["block_rows"] = block_rows
    return Store.create(store_path, cohort, **kw), True


def _progress(enabled: bool):
    """A rich progress bar on stderr with a cells/s column."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class CellsPerSecond(ProgressColumn):
        def render(self, task):  # noqa: ANN001, ANN202
            elapsed = task.elapsed or 0.0  # the run's mean rate (steadier than a window)
            speed = task.completed / elapsed if elapsed > 0 and task.completed else None
            return Text(f"{speed:,.1f} cells/s" if speed else "-- cells/s", style="cyan")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        CellsPerSecond(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def run_featurize(
    data: Cohort | str | os.PathLike | None,
    store_path: str | os.PathLike,
    encoder: Encoder | str = DEFAULT_ENCODER,
    *,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    adapter: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    force: bool = False,
    progress: bool = False,
    on_block: Callable[[int], None] | None = None,
    rank: int = 0,
    world: int = 1,
    job_id: str | None = None,
    chunk_rows: int | None = None,
    block_rows: int | None = None,
) -> FeaturizeReport:
    """Embed every cell of a cohort with ``encoder`` into the store at ``store_path``.

    Creates the store from ``data`` if missing (a store of another cohort is refused);
    skips blocks already done (a rerun is a no-op; a killed run resumes exactly);
    ``force`` recomputes everything. ``on_block(block)`` is called (in the writer
    thread) after each block is stored. ``rank``/``world`` select this process's share
    of blocks when several processes of one job (same ``job_id``) write together.
    """
    if batch_size < 1:
        raise FeaturizeError(f"batch size must be >= 1, got {batch_size}")
    if data is not None and not isinstance(data, Cohort):
        data = read_cohort(data)  # bad input fails before anything is built or written
    if isinstance(encoder, Encoder):
        enc = encoder
    else:
        enc = create_encoder(
            encoder,
            weights=weights,
            image_size=image_size,
            adapter=adapter,
            device=device,
            precision=precision,
        )
    store, created = open_or_create(data, store_path, chunk_rows, block_rows)
    if data is not None and rank == 0 and not created:
        store.update_paths(data.cells["path"])  # the cohort may have moved since
    eid = enc.id
    report = FeaturizeReport(store=store, encoder_id=eid, created_store=created)
    lock = store.lock(eid, job_id=job_id)
    with lock:
        report.took_over_lock = lock.took_over
        if rank == 0:
            if force:
                store.reset_encoder(eid)
            store.init_encoder(eid, enc.dim, enc.metadata)
        else:
            _wait_for_encoder(store, eid)  # rank 0 creates the arrays; others write into them
        done = store.done_blocks(eid)
        mine = chunks_for_rank(store.n_blocks, rank, world)
        todo = [b for b in mine if not done[b]]
        report.blocks_skipped = len(mine) - len(todo)
        recorded = store.encoder_info(eid).get("precision")
        if todo and done.any() and recorded and recorded != enc.precision:
            raise FeaturizeError(
                f"{store.path}: encoder {eid} was started in {recorded}; resume it with "
                f"--precision {recorded} (or --force to recompute in {enc.precision})"
            )
        if todo:
            _run_blocks(store, enc, todo, batch_size, workers, progress, on_block, report)
        report.complete = store.mark_complete(eid) if done.all() or todo else False
        if report.complete and report.cells_computed:
            store.update_encoder_attrs(
                eid,
                last_run={
                    "cells": report.cells_computed,
                    "seconds": round(report.seconds, 3),
                    "cells_per_s": round(report.cells_per_s, 2),
                    "device": enc.device,
                    "precision": enc.precision,
                    "batch_size": batch_size,
                    "host": socket.gethostname(),
                },
            )
    report.unreadable = store.problems()[["cell_id", "path", "reason"]]
    return report


def _wait_for_encoder(store: Store, eid: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not store.has_encoder(eid):
        if time.monotonic() > deadline:
            raise FeaturizeError(
                f"{store.path}: rank 0 did not create encoder {eid} in {timeout:.0f} s"
            )
        time.sleep(0.2)


def featurize(
    data: Cohort | str | os.PathLike | None,
    store_path: str | os.PathLike,
    encoder: Encoder | str = DEFAULT_ENCODER,
    batch_size: int = 64,
    **kwargs: Any,
) -> Store:
    """Embed a cohort into the store and return the store (see :func:`run_featurize`)."""
    return run_featurize(data, store_path, encoder, batch_size=batch_size, **kwargs).store


@dataclass
class _Block:
    """The rows of one block being filled batch by batch, then written at once."""

    index: int
    start: int
    emb: np.ndarray
    status: np.ndarray
    reason: list[str]
    sha: list[str]

    @classmethod
    def empty(cls, store: Store, index: int, dim: int) -> _Block:
        a, z = store.block_range(index)
        n = z - a
        return cls(
            index,
            a,
            np.full((n, dim), np.nan, np.float32),
            np.zeros(n, np.uint8),
            [""] * n,
            [""] * n,
        )

    def record(self, first_row: int, results: list[Decoded]) -> list[int]:
        """Note status, reason and digest of decoded cells; return the readable ones."""
        ok = []
        for j, r in enumerate(results):
            row = first_row - self.start + j
            self.sha[row] = r.sha256
            if r.pixels is None:
                self.status[row] = STATUS_UNREADABLE
                self.reason[row] = r.reason
            else:
                ok.append(j)
        return ok


def _run_blocks(
    store: Store,
    enc: Encoder,
    todo: list[int],
    batch_size: int,
    workers: int | None,
    progress: bool,
    on_block: Callable[[int], None] | None,
    report: FeaturizeReport,
) -> None:
    import torch

    gpu = enc.device.startswith("cuda")
    if gpu:
        torch.backends.cudnn.benchmark = True
    cells = store.cells()
    paths = cells["path"].to_numpy(dtype=object)
    old_sha = cells["sha256"].to_numpy(dtype=object)
    ids = cells["cell_id"].to_numpy(dtype=object)
    # batches never span two blocks: a block's numbers do not depend on the others
    batches: list[tuple[int, int, int]] = []
    for b in todo:
        a, z = store.block_range(b)
        batches.extend((b, s, min(s + batch_size, z)) for s in range(a, z, batch_size))
    size, interp = enc.image_size, enc.interpolation
    decode = ThreadPoolExecutor(workers or default_workers(enc.device), "cellbag-decode")
    writer = ThreadPoolExecutor(1, "cellbag-write")
    pending: deque[list[Future[Decoded]]] = deque()
    writes: deque[Future[None]] = deque()

    def prefetch(k: int) -> None:
        if k < len(batches):
            _, s, z = batches[k]
            pending.append(
                [decode.submit(decode_file, paths[i], size, interp) for i in range(s, z)]
            )

    def write(blk: _Block) -> None:
        store.write_block(enc.id, blk.index, blk.emb, blk.status, blk.reason, blk.sha)
        if on_block is not None:
            on_block(blk.index)

    lookahead = 4 if gpu else 2
    t0 = time.perf_counter()
    blk: _Block | None = None
    try:
        with _progress(progress) as bar:
            task = bar.add_task(enc.id, total=sum(z - s for _, s, z in batches))
            for k in range(lookahead):
                prefetch(k)
            for k, (block, s, z) in enumerate(batches):
                results = [f.result() for f in pending.popleft()]
                prefetch(k + lookahead)
                if blk is None:
                    blk = _Block.empty(store, block, enc.dim)
                ok = blk.record(s, results)
                report.changed.extend(
                    str(ids[s + j])
                    for j in ok
                    if old_sha[s + j] and old_sha[s + j] != results[j].sha256
                )
                if ok:
                    pixels = torch.from_numpy(np.stack([results[j].pixels for j in ok]))
                    blk.emb[np.asarray(ok) + (s - blk.start)] = enc.forward_pixels(pixels).numpy()
                report.cells_computed += z - s
                bar.advance(task, z - s)
                if k + 1 == len(batches) or batches[k + 1][0] != block:
                    while writes and (writes[0].done() or len(writes) >= 2):
                        writes.popleft().result()  # surfaces write errors
                    writes.append(writer.submit(write, blk))
                    report.blocks_computed += 1
                    blk = None
            while writes:
                writes.popleft().result()
    except StoreError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise FeaturizeError(
            f"{store.path}: out of GPU memory at batch size {batch_size}; use a smaller "
            "--batch-size (finished blocks are kept)"
        ) from None
    except OSError as e:
        raise FeaturizeError(f"{store.path}: writing {enc.id} failed ({e})") from None
    finally:
        for futs in pending:
            for f in futs:
                f.cancel()
        decode.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)  # blocks already computed are still written
        report.seconds = time.perf_counter() - t0
