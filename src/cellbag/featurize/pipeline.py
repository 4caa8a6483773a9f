"""Featurize a cohort into the store: decode in threads, embed in batches, write by block.

The work is cut into blocks of rows (see :mod:`cellbag.store.blocks`). Batches never
span two blocks, so a block's numbers do not depend on which other blocks were done
before, nor on which process did them: a resumed run, or one split among the ranks of
a torchrun job (:mod:`cellbag.featurize.distributed`), equals an uninterrupted one.
While the model runs on one batch, worker threads decode the next ones (beside a GPU:
threads read the files and the GPU decodes the JPEGs, see
:mod:`cellbag.featurize.gpu_decode`), and a writer thread stores the previous block.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellbag.core.allocator import tune_allocator
from cellbag.data import Cohort, read_cohort
from cellbag.featurize.config import FeaturizeConfig
from cellbag.featurize.errors import FeaturizeError
from cellbag.featurize.gpu_decode import batch_loader
from cellbag.featurize.images import Decoded
from cellbag.featurize.registry import DEFAULT_ENCODER, Encoder, create_encoder
from cellbag.store import STATUS_UNREADABLE, Store, StoreError, chunks_for_rank

if TYPE_CHECKING:
    from cellbag.featurize.distributed import Detached
    from cellbag.store.sync import SyncDiff


@dataclass
class FeaturizeReport:
    """What one featurize run did.

    In a torchrun job (``world > 1``) the counts and ``seconds`` are the job's totals, the
    same on every rank, and ``ranks`` holds each rank's own figures (:meth:`rank_stats`).
    """

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
    sync: SyncDiff | None = None  # how the cohort differed from the store (applied: --update)
    refreshed: list[str] = field(default_factory=list)  # other encoders recomputed by --update
    compute_seconds: float = 0.0  # model forward passes
    decode_wait_seconds: float = 0.0  # the model waiting for decoded images
    write_seconds: float = 0.0  # store writes (a writer thread, overlapped with compute)
    write_wait_seconds: float = 0.0  # the model waiting for the writer
    read_seconds: float = 0.0  # file reads, summed over the read threads
    decode_seconds: float = 0.0  # image decoding, summed over threads (GPU: the decode thread)
    #: what ``--crop auto`` / ``--stain auto`` decided, and why (None: neither was auto)
    preprocessing: str | None = None
    decode: str = ""  # where images were decoded: cpu (PIL threads) | gpu (gpu_decode)
    rank: int = 0
    world: int = 1
    device: str = ""
    ranks: list[dict[str, Any]] = field(default_factory=list)
    #: where the run's settings were written (None: an Encoder object, or a URL store whose
    #: filesystem does not take the file)
    config_path: str | None = None

    @property
    def cells_per_s(self) -> float:
        return self.cells_computed / self.seconds if self.seconds > 0 else 0.0

    def rank_stats(self) -> dict[str, Any]:
        """This process's own figures (cells, blocks, seconds of compute / decode / write)."""
        return {
            "rank": self.rank,
            "host": socket.gethostname(),
            "device": self.device,
            "cells": self.cells_computed,
            "blocks": self.blocks_computed,
            "seconds": round(self.seconds, 3),
            "compute_s": round(self.compute_seconds, 3),
            "decode_wait_s": round(self.decode_wait_seconds, 3),
            "write_s": round(self.write_seconds, 3),
            "write_wait_s": round(self.write_wait_seconds, 3),
            "read_s": round(self.read_seconds, 3),
            "decode_s": round(self.decode_seconds, 3),
            "decode": self.decode,
        }


def default_workers(device: str) -> int:
    """Decode threads: one on a CPU (the model needs the cores), many beside a GPU.

    Under torchrun the machine's cores are shared among its ``LOCAL_WORLD_SIZE`` ranks.
    """
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    n = max(1, (os.cpu_count() or 1) // local)
    return max(1, min(32, n)) if device.startswith("cuda") else max(1, min(2, n // 2))


def open_or_create(
    data: Cohort | str | os.PathLike | None,
    store_path: str | os.PathLike,
    chunk_rows: int | None = None,
    block_rows: int | None = None,
    *,
    update: bool = False,
    force: bool = False,
) -> tuple[Store, bool, SyncDiff | None]:
    """Open the store (checking it is in sync with ``data``) or create it from ``data``.

    A cohort that changed since the store read it is refused in one line, or with
    ``update`` applied (see :mod:`cellbag.featurize.sync`); a store of another cohort is
    replaced only with ``force``. Returns the store, whether it was created, and the diff.
    """
    from cellbag.featurize.sync import check_sync
    from cellbag.store.sync import recover_swap

    cohort = None
    if data is not None:
        cohort = data if isinstance(data, Cohort) else read_cohort(data)
    recover_swap(store_path)
    if Store.exists(store_path):
        store = Store.open(store_path, mode="r+")
        if cohort is None:
            return store, False, None
        try:
            store, diff = check_sync(store, cohort, update=update, force=force)
        except OSError as e:
            raise FeaturizeError(
                f"{store_path}: cannot write the store ({e.strerror or e})"
            ) from None
        if store is not None:
            return store, False, diff
    if cohort is None:
        raise FeaturizeError(f"{store_path}: no store here, and no cohort given to create it")
    kw = {}
    if chunk_rows:
        kw["chunk_rows"] = chunk_rows
    if block_rows:
        kw["block_rows"] = block_rows
    from cellbag.store.feature_store import StoreExists

    try:
        return Store.create(store_path, cohort, **kw), True, None
    except StoreExists:  # another job made it meanwhile
        return open_or_create(cohort, store_path, update=update)


def _progress(enabled: bool):
    """Progress in cells (a bar on a terminal, plain lines in a log)."""
    from cellbag.core.progress import progress_bar

    return progress_bar("cells", enabled=enabled)


def run_featurize_config(
    cfg: FeaturizeConfig,
    *,
    progress: bool = False,
    on_block: Callable[[int], None] | None = None,
    rank: int = 0,
    world: int = 1,
    job_id: str | None = None,
    coordinator: Detached | None = None,
) -> FeaturizeReport:
    """Run the featurize job that ``cfg`` describes (``cellbag featurize --config FILE``);
    the other arguments say how this process takes part, as in :func:`run_featurize`."""
    if cfg.store is None:
        raise FeaturizeError("no store given: set `store` in the config (or give STORE)")
    return run_featurize(
        cfg.data,
        cfg.store,
        cfg.encoder,
        progress=progress,
        on_block=on_block,
        rank=rank,
        world=world,
        job_id=job_id,
        coordinator=coordinator,
        **cfg.kwargs(),
    )


def _save_settings(cfg: FeaturizeConfig, store: Store, encoder_id: str) -> str | None:
    """Write the run's settings beside the encoder's embeddings; None where a URL store's
    filesystem does not take the file (the run goes on)."""
    from cellbag.featurize.config import write_config

    try:
        return write_config(cfg, store.path, encoder_id)
    except Exception as e:
        if "://" in store.path and not store.path.startswith("file://"):
            return None
        if isinstance(e, OSError):
            raise FeaturizeError(
                f"{store.path}: cannot write the run's settings ({e.strerror or e})"
            ) from None
        raise


def run_featurize(
    data: FeaturizeConfig | Cohort | str | os.PathLike | None,
    store_path: str | os.PathLike | None = None,
    encoder: Encoder | str = DEFAULT_ENCODER,
    *,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    crop: float | str | None = "auto",
    stain: str | None = "auto",
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
    coordinator: Detached | None = None,
    update: bool = False,
    decode: str = "auto",
) -> FeaturizeReport:
    """Embed every cell of a cohort with ``encoder`` into the store at ``store_path``.

    ``data`` may be a :class:`~cellbag.featurize.config.FeaturizeConfig` instead: it then
    holds every setting (:func:`run_featurize_config`). A run whose encoder is given by
    name writes its settings to ``STORE/embeddings/<encoder id>/featurize.yaml``
    (``report.config_path``; an :class:`Encoder` object passed in has none to write).

    Creates the store from ``data`` if missing (a store of another cohort is refused);
    skips blocks already done (a rerun is a no-op; a killed run resumes exactly);
    ``force`` recomputes everything. ``on_block(block)`` is called (in the writer
    thread) after each block is stored.

    ``coordinator`` (from :func:`cellbag.featurize.distributed.distributed`) makes this
    process one rank of a torchrun job: rank 0 sets the store up, every rank embeds its
    share of the blocks left, rank 0 marks completion. Without it, ``rank``/``world``/
    ``job_id`` let independent processes of one job (same ``job_id``) split the blocks
    ``rank::world``; rank 0 must have created the encoder before the others start.

    Images or labels that changed since the store read them are refused in one line; with
    ``update`` the store is brought up to date and the changed cells are re-embedded for
    every encoder in the store (a single process only).

    ``crop`` and ``stain`` default to ``auto``: the centre crop 0.57 and Reinhard's colour
    normalisation where a look at the cohort's images finds smear crops centred on a small
    cell, else the whole image as read (:mod:`cellbag.featurize.smear`; what was decided is
    ``report.preprocessing``, the resolved values are what the encoder id and its
    ``featurize.yaml`` record). ``None`` is the whole image / no normalisation.

    ``decode``: ``cpu`` decodes with PIL in threads, ``gpu`` decodes JPEGs in batches on
    the encoder's CUDA device (:mod:`cellbag.featurize.gpu_decode`), ``auto`` picks ``gpu``
    when the encoder runs on CUDA.
    """
    from cellbag.featurize.distributed import Detached, RankAborted
    from cellbag.featurize.gpu_decode import resolve_decode

    if isinstance(data, FeaturizeConfig):
        return run_featurize_config(
            data,
            progress=progress,
            on_block=on_block,
            rank=rank,
            world=world,
            job_id=job_id,
            coordinator=coordinator,
        )
    if store_path is None:
        raise FeaturizeError("no store given: pass store_path (or a FeaturizeConfig)")
    settings = None
    look = None
    if isinstance(encoder, str):
        settings = FeaturizeConfig(
            data=str(data.root) if isinstance(data, Cohort) else data,
            store=store_path,
            encoder=encoder,
            weights=weights,
            image_size=image_size,
            crop=crop,
            stain=stain,
            adapter=adapter,
            batch_size=batch_size,
            device=device,
            precision=precision,
            workers=workers,
            decode=decode,
            chunk_rows=chunk_rows,
            block_rows=block_rows,
            force=force,
            update=update,
        )
    tune_allocator()  # no page-fault storm from each batch's activation buffers
    if batch_size < 1:
        raise FeaturizeError(f"batch size must be >= 1, got {batch_size}")
    coord = coordinator if coordinator is not None else Detached(rank, world, job_id)
    rank, world = coord.rank, coord.world
    if update and world > 1:
        raise FeaturizeError(f"{store_path}: run --update in a single process, not under torchrun")
    lead = rank == 0 or not coord.coordinated  # sets the store up itself
    lock = None
    try:
        setup_error: Exception | None = None
        try:
            if lead and data is not None and not isinstance(data, Cohort):
                data = read_cohort(data)  # bad input fails before anything is built or written
            if isinstance(encoder, Encoder):
                enc = encoder
            else:
                crop, stain, look = _resolve_auto(crop, stain, data, store_path)
                if settings is not None:
                    settings.crop, settings.stain = crop, stain
                enc = create_encoder(
                    encoder,
                    weights=weights,
                    image_size=image_size,
                    crop=crop,
                    stain=stain,
                    adapter=adapter,
                    device=device,
                    precision=precision,
                )
            decode = resolve_decode(decode, enc.device)
            if lead:
                store, created, lock, done, diff = _set_up(
                    data, store_path, enc, coord, force, chunk_rows, block_rows, update
                )
        except Exception as e:
            if not coord.coordinated:
                raise
            setup_error = e
        if coord.coordinated:  # rank 0 tells every rank how setup went, and what is done
            plan = None
            if rank == 0:
                plan = (
                    {"error": f"{setup_error}"}
                    if setup_error
                    else {"id": enc.id, "done": done.tolist(), "created": created}
                )
            plan = coord.broadcast(plan)
            if setup_error is not None:
                raise setup_error
            if "error" in plan:
                raise RankAborted(f"rank {rank}: stopped, rank 0 failed: {plan['error']}")
            if rank > 0:
                if plan["id"] != enc.id:
                    raise FeaturizeError(
                        f"{store_path}: rank {rank} built encoder {enc.id}, rank 0 built "
                        f"{plan['id']}; give every node the same weights and options"
                    )
                store, created = Store.open(store_path, mode="r+"), bool(plan["created"])
                lock = store.lock(enc.id, job_id=coord.job_id).acquire()  # joins rank 0's
                done = np.asarray(plan["done"], dtype=bool)
        report = FeaturizeReport(
            store=store,
            encoder_id=enc.id,
            created_store=created,
            rank=rank,
            world=world,
            device=enc.device,
            decode=decode,
        )
        report.took_over_lock = lock.took_over
        report.preprocessing = None if look is None else look.text()
        if rank == 0 and settings is not None:
            report.config_path = _save_settings(settings, store, enc.id)
        report.sync = diff if lead else None
        _embed_share(store, enc, done, coord, batch_size, workers, progress, on_block, report)
    finally:
        if lock is not None:
            lock.release()  # rank 0's release (after the last barrier) ends the job's lock
    if report.sync is not None and not report.sync.in_sync:
        from cellbag.featurize.sync import refresh_encoders

        report.refreshed = refresh_encoders(
            report.store,
            enc,
            featurize=run_featurize,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
        report.store = Store.open(report.store.path, mode="r+")
    report.unreadable = report.store.problems()[["cell_id", "path", "reason"]]
    return report


def _resolve_auto(
    crop: float | str | None,
    stain: str | None,
    data: Cohort | str | os.PathLike | None,
    store_path: str | os.PathLike,
) -> tuple[float | None, str | None, Any]:
    """``crop`` and ``stain`` with each ``auto`` decided from a look at the cohort's images
    (:func:`cellbag.featurize.smear.resolve`; the same sample on every rank), and the look."""
    from cellbag.featurize import smear

    if not smear.needs_look(crop, stain):
        return smear.resolve(crop, stain, [])  # nothing to look at
    if data is None:
        paths = Store.open(store_path, mode="r").cells()["path"].astype(str).tolist()
    else:
        cohort = data if isinstance(data, Cohort) else read_cohort(data)
        paths = cohort.cells["path"].astype(str).tolist()
    return smear.resolve(crop, stain, paths)


def _set_up(
    data: Cohort | None,
    store_path: str | os.PathLike,
    enc: Encoder,
    coord: Detached,
    force: bool,
    chunk_rows: int | None,
    block_rows: int | None,
    update: bool = False,
) -> tuple[Store, bool, Any, np.ndarray, SyncDiff | None]:
    """Open or create the store, take the job lock, create the encoder's arrays.

    Returns the store, whether it was created, the (held or joined) lock, the done
    marks and the cohort's diff. On error the lock is released again.
    """
    store, created, diff = open_or_create(
        data, store_path, chunk_rows, block_rows, update=update, force=force
    )
    eid = enc.id
    lock = store.lock(eid, job_id=coord.job_id).acquire()
    try:
        if coord.rank == 0:
            if force:
                store.reset_encoder(eid)
            store.init_encoder(eid, enc.dim, enc.metadata)
        elif not store.has_encoder(eid):
            raise FeaturizeError(
                f"{store.path}: rank {coord.rank} of {coord.world} found no encoder {eid}; "
                "start rank 0 first (or launch every rank with torchrun)"
            )
        done = store.done_blocks(eid)
        recorded = store.encoder_info(eid).get("precision")
        if not done.all() and done.any() and recorded and recorded != enc.precision:
            raise FeaturizeError(
                f"{store.path}: encoder {eid} was started in {recorded}; resume it with "
                f"--precision {recorded} (or --force to recompute in {enc.precision})"
            )
    except OSError as e:
        lock.release()
        raise FeaturizeError(f"{store.path}: cannot write the store ({e.strerror or e})") from None
    except BaseException:
        lock.release()
        raise
    return store, created, lock, done, diff


def _embed_share(
    store: Store,
    enc: Encoder,
    done: np.ndarray,
    coord: Detached,
    batch_size: int,
    workers: int | None,
    progress: bool,
    on_block: Callable[[int], None] | None,
    report: FeaturizeReport,
) -> None:
    """Embed this rank's blocks; in a job, wait for all ranks and let rank 0 finish up."""
    from cellbag.featurize.distributed import JobProgress

    rank, world = coord.rank, coord.world
    eid = enc.id
    left = [b for b in range(store.n_blocks) if not done[b]]
    if coord.coordinated:  # the blocks left, dealt round-robin: balanced after a resume too
        mine = [left[i] for i in chunks_for_rank(len(left), rank, world)]
        report.blocks_skipped = store.n_blocks - len(left)
        shown = left
    else:
        own = chunks_for_rank(store.n_blocks, rank, world)
        mine = [b for b in own if not done[b]]
        report.blocks_skipped = len(own) - len(mine)
        shown = mine
    if rank > 0 and mine:  # a machine without the cohort would record every cell unreadable
        folder = os.path.dirname(store.cells()["path"].iloc[store.block_range(mine[0])[0]])
        if not os.path.isdir(folder):
            raise FeaturizeError(
                f"{store.path}: rank {rank} on {socket.gethostname()} cannot see the cohort "
                f"({folder} is missing); every machine needs DATA at the same path"
            )
    total = sum(z - a for a, z in map(store.block_range, shown))
    show = progress and (rank == 0 or not coord.coordinated)
    label = f"{eid} ({world} ranks)" if coord.coordinated else eid
    with _progress(show) as bar:
        task = bar.add_task(label, total=total)
        counter = JobProgress(coord, bar, task)
        try:
            if mine:
                _run_blocks(store, enc, mine, batch_size, workers, counter.tick, on_block, report)
            counter.flush()
            if not coord.coordinated:
                report.complete = store.mark_complete(eid) if done.all() or mine else False
                report.ranks = [report.rank_stats()]
                if report.complete and report.cells_computed:
                    _record_run(store, enc, report, report.ranks, batch_size)
                return
            t0 = time.perf_counter()
            coord.barrier()  # every rank has written its blocks
            tail = time.perf_counter() - t0
            gathered = coord.gather(
                (dict(report.rank_stats(), waited_s=round(tail, 3)), report.changed)
            )
            stats = [g[0] for g in gathered]
            counter.close(total=sum(s["cells"] for s in stats))
        finally:
            counter.close()
    report.ranks = stats
    report.changed = [c for g in gathered for c in g[1]]
    report.cells_computed = sum(s["cells"] for s in stats)
    report.blocks_computed = sum(s["blocks"] for s in stats)
    if rank == 0:
        store = Store.open(store.path, mode="r+")  # what every rank wrote, uncached
        complete = store.mark_complete(eid)
        seconds = max(s["seconds"] + s["waited_s"] for s in stats)
        report.seconds, report.complete = seconds, complete
        if complete and report.cells_computed:
            _record_run(store, enc, report, stats, batch_size)
    report.seconds, report.complete = coord.broadcast((report.seconds, report.complete))
    report.store = store if rank == 0 else Store.open(store.path, mode="r+")


def _record_run(
    store: Store,
    enc: Encoder,
    report: FeaturizeReport,
    ranks: list[dict[str, Any]],
    batch_size: int,
) -> None:
    """Note the run's figures in the encoder's metadata (``last_run``)."""
    store.update_encoder_attrs(
        enc.id,
        last_run={
            "cells": report.cells_computed,
            "seconds": round(report.seconds, 3),
            "cells_per_s": round(report.cells_per_s, 2),
            "device": enc.device,
            "precision": enc.precision,
            "decode": report.decode,
            "batch_size": batch_size,
            "host": socket.gethostname(),
            "world": report.world,
            "ranks": ranks,
        },
    )


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
    size: list[int] = field(default_factory=list)
    mtime: list[int] = field(default_factory=list)

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
            [-1] * n,
            [-1] * n,
        )

    def record(self, first_row: int, results: list[Decoded]) -> list[int]:
        """Note status, reason and digest of decoded cells; return the readable ones."""
        ok = []
        for j, r in enumerate(results):
            row = first_row - self.start + j
            self.sha[row] = r.sha256
            self.size[row], self.mtime[row] = r.size, r.mtime_ns
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
    tick: Callable[[int], None],
    on_block: Callable[[int], None] | None,
    report: FeaturizeReport,
) -> None:
    """Embed blocks ``todo`` in order; ``tick(n)`` after each batch of ``n`` cells."""
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
    loader = batch_loader(
        report.decode or "auto",
        enc.device,
        enc.image_size,
        enc.interpolation,
        workers or default_workers(enc.device),
        enc.crop,
        enc.stain,
    )
    writer = ThreadPoolExecutor(1, "cellbag-write")
    pending: deque[Any] = deque()
    writes: deque[Future[None]] = deque()

    def prefetch(k: int) -> None:
        if k < len(batches):
            _, s, z = batches[k]
            pending.append(loader.submit(paths[s:z]))

    def write(blk: _Block) -> None:
        w0 = time.perf_counter()
        store.write_block(
            enc.id, blk.index, blk.emb, blk.status, blk.reason, blk.sha, blk.size, blk.mtime
        )
        report.write_seconds += time.perf_counter() - w0  # only this thread adds to it
        if on_block is not None:
            on_block(blk.index)

    lookahead = 4 if gpu else 2
    t0 = time.perf_counter()
    blk: _Block | None = None
    try:
        for k in range(lookahead):
            prefetch(k)
        for k, (block, s, z) in enumerate(batches):
            c0 = time.perf_counter()
            results = loader.collect(pending.popleft())
            c1 = time.perf_counter()
            report.decode_wait_seconds += c1 - c0
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
                c1 = time.perf_counter()
                pixels = loader.stack([results[j].pixels for j in ok])
                blk.emb[np.asarray(ok) + (s - blk.start)] = enc.forward_pixels(pixels).numpy()
                report.compute_seconds += time.perf_counter() - c1  # .cpu() synchronises
            report.cells_computed += z - s
            tick(z - s)
            if k + 1 == len(batches) or batches[k + 1][0] != block:
                c2 = time.perf_counter()
                while writes and (writes[0].done() or len(writes) >= 2):
                    writes.popleft().result()  # surfaces write errors
                report.write_wait_seconds += time.perf_counter() - c2
                writes.append(writer.submit(write, blk))
                report.blocks_computed += 1
                blk = None
        c2 = time.perf_counter()
        while writes:
            writes.popleft().result()
        report.write_wait_seconds += time.perf_counter() - c2
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
        for handle in pending:
            loader.cancel(handle)
        loader.close()
        report.read_seconds += loader.timer.seconds["read"]
        report.decode_seconds += loader.timer.seconds["decode"]
        writer.shutdown(wait=True)  # blocks already computed are still written
        report.seconds = time.perf_counter() - t0
