"""Featurize with several processes (GPUs, machines) launched by ``torchrun``.

One job = the processes of one ``torchrun`` launch. Rank 0 opens or creates the store,
takes the encoder's job lock on behalf of the whole job, applies ``--force`` and creates
the encoder's arrays; then a barrier, and every rank embeds its share of the blocks not
yet done (round-robin over the remaining blocks: disjoint, balanced, the same on every
rank) and writes its rows and done marks into the same store, concurrently: blocks are
whole Zarr chunks, so no two ranks ever touch the same object. A final barrier, rank 0
marks the encoder complete and releases the lock.

Ranks talk only through small objects (the plan, the per-rank timings) and a counter of
embedded cells in the launcher's key-value store (the live cells/s of the job on rank 0).
Nothing here is needed for a single process: :class:`Detached` is the no-op coordinator.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from cellbag.featurize.errors import FeaturizeError
from cellbag.featurize.errors import RankAborted as RankAborted  # the CLI, the pipeline

DEFAULT_TIMEOUT_S = 3600.0  # setup of a large store and the slowest rank's tail fit well inside


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise FeaturizeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer (set by torchrun)"
        ) from None


class Detached:
    """The coordinator of a process that talks to no other: collectives are no-ops.

    With ``world > 1`` it is one of several processes started independently (e.g. an array
    job) that share a ``job_id``: each takes blocks ``rank::world`` of all blocks; rank 0
    must have created the encoder before the others start.
    """

    coordinated = False

    def __init__(self, rank: int = 0, world: int = 1, job_id: str | None = None) -> None:
        if world < 1 or not 0 <= rank < world:
            raise FeaturizeError(f"rank {rank} is not in a world of {world}")
        self.rank = rank
        self.world = world
        self.job_id = job_id or uuid.uuid4().hex
        self.device: str | None = None

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for here)."""

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        return [obj]

    def add_cells(self, n: int) -> None:
        """Count ``n`` cells embedded by this rank (job progress)."""

    def cells_done(self) -> int | None:
        """Cells embedded by the other ranks so far (None when unknown)."""
        return 0


class TorchDistributed(Detached):
    """The coordinator of one rank of a torchrun job (an initialised process group)."""

    coordinated = True

    def __init__(self, device: str, backend: str, job_id: str | None = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device
        self.backend = backend
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        run = os.environ.get("TORCHELASTIC_RUN_ID") or "{}:{}".format(
            os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?")
        )
        # one fresh id per launch, shared by its ranks: a relaunch is another job
        self.job_id = job_id or self.broadcast(f"torchrun-{run}-{uuid.uuid4().hex[:12]}")
        self._kv = _default_kv_store()
        self._key = f"cellbag/featurize/{self.job_id}/cells"

    @contextmanager
    def _peers(self) -> Iterator[None]:
        """Turn a collective that fails (a rank died) into a one-line error."""
        try:
            yield
        except RuntimeError as e:  # torch.distributed's errors derive from it
            text = re.sub(r"\[[^\]]*\]\s*", "", str(e)).strip()  # no "[file:line]" tags
            first = text.splitlines()[0] if text else type(e).__name__
            raise FeaturizeError(
                f"rank {self.rank}: another rank of the job stopped ({first[:200]}); the blocks "
                "written are kept: rerun the command, with any number of processes, to finish"
            ) from None

    def barrier(self) -> None:
        with self._peers():
            if self.backend == "nccl":
                import torch

                self._dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                self._dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        with self._peers():
            self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        with self._peers():
            self._dist.all_gather_object(out, obj)
        return out

    def add_cells(self, n: int) -> None:
        if self._kv is not None and n:
            self._kv.add(self._key, int(n))

    def cells_done(self) -> int | None:
        if self._kv is None:
            return None
        return int(self._kv.add(self._key, 0))


def _default_kv_store() -> Any:
    """The process group's key-value store (torchrun's TCP store), or None."""
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # a private API: progress falls back to rank 0's own count
        return None


def rank_device(device: str = "auto") -> tuple[str, str]:
    """This rank's device (``cuda:LOCAL_RANK`` on GPUs) and its backend (nccl | gloo)."""
    import torch

    from cellbag.core.device import resolve_device
    from cellbag.featurize.errors import EncoderError

    dev = str(resolve_device(device, error=EncoderError).device)
    if not dev.startswith("cuda"):
        return dev, "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    n = torch.cuda.device_count()
    if local >= n:
        raise FeaturizeError(
            f"LOCAL_RANK {local} but {socket.gethostname()} has {n} GPU(s); "
            f"use torchrun --nproc_per_node={n} (or fewer)"
        )
    torch.cuda.set_device(local)
    return f"cuda:{local}", "nccl"


@contextmanager
def distributed(
    device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[TorchDistributed]:
    """Join the torchrun job (init the process group), yield its coordinator, then leave.

    Each rank uses its own device: ``cuda:LOCAL_RANK`` (NCCL) on GPUs, the CPU (gloo)
    otherwise. The process group is destroyed on the way out, error or not.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise FeaturizeError("this torch build has no torch.distributed; run one process")
    dev, backend = rank_device(device)
    owned = not dist.is_initialized()
    if owned:
        kw: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            import torch

            kw["device_id"] = torch.device(dev)
        try:
            dist.init_process_group(backend, **kw)
        except ValueError as e:  # env:// without torchrun's variables
            raise FeaturizeError(
                f"cannot join the torchrun job ({e}); launch with torchrun --nproc_per_node=N"
            ) from None
    try:
        yield TorchDistributed(dev, backend)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


class JobProgress:
    """Counts embedded cells; on rank 0 of a job shows the job's total in a progress bar.

    Ranks > 0 add their count to the job's counter every ``every`` seconds; rank 0 reads
    it as often and shows the sum of all ranks, so the bar's cells/s is the job's.
    """

    def __init__(self, coord: Detached, bar: Any, task: Any, every: float = 0.5) -> None:
        self.coord = coord
        self.bar = bar
        self.task = task
        self.every = every
        self.mine = 0
        self._unsent = 0
        self._sent_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if coord.rank == 0 and coord.world > 1:
            self._thread = threading.Thread(target=self._poll, name="cellbag-progress", daemon=True)
            self._thread.start()

    def tick(self, n: int) -> None:
        """This rank embedded ``n`` more cells."""
        self.mine += n
        if self.coord.world == 1:
            self.bar.advance(self.task, n)
        elif self.coord.rank > 0:
            self._unsent += n
            if time.monotonic() - self._sent_at >= self.every:
                self.flush()

    def flush(self) -> None:
        """Send the count not yet sent (ranks > 0)."""
        if self.coord.rank > 0 and self._unsent:
            self.coord.add_cells(self._unsent)
            self._unsent = 0
            self._sent_at = time.monotonic()

    def _update(self) -> None:
        others = self.coord.cells_done() or 0
        self.bar.update(self.task, completed=self.mine + others)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._update()
            except Exception:  # the job is ending (a rank died): stop showing
                return

    def close(self, total: int | None = None) -> None:
        """Stop polling; show ``total`` (the job's exact count) if known."""
        self.flush()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if total is not None:
            self.bar.update(self.task, completed=total)
