"""Thread counts of the numeric libraries (torch, BLAS, OpenMP), set in one place.

A run uses one torch thread by default: torch's CPU reductions split by thread, so another
thread count can change the last bits (and early stopping can amplify that), and the
tensors of a cohort's heads are small: on a busy 2-core machine two OpenMP threads made a
5-fold abmil cv 15x slower (305 s vs 20 s). Parallelism comes from processes instead (one
fit per worker, :mod:`cellbag.evaluate.parallel`), each pinned to one thread of everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def default_threads() -> int:
    """Torch threads for a run: one, always (``--threads`` overrides it; figures are then
    reproducible at that thread count)."""
    return 1


def available_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the duration (``None``: leave them)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def single_threaded(torch_n: int = 1) -> Iterator[None]:
    """One thread for BLAS and OpenMP pools (threadpoolctl) and ``torch_n`` for torch: what
    a worker process running one fit at a time needs, so N workers use N cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), torch_threads(torch_n):
        yield
