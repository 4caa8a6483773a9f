"""A grid of independent fits on every core (joblib's loky processes) or a Dask cluster.

Each task runs with one thread of torch, BLAS and OpenMP (``threads`` for torch when set),
so N workers use N cores without oversubscription; results are put back in task order,
whatever order they finish in, so a run's numbers are the same for any number of workers
(each task carries its own seed). ``jobs=1`` without a cluster runs in this process.

Bags reach workers by reference when they come from a store (:class:`StoreBags`: path or
URL, encoder, split and patients): each worker process reads them once and keeps them, so a
cluster's workers read the store (a shared filesystem or object storage), never arrays
pickled by the client. In-memory bags (``cross_validate`` on arrays) travel with the tasks.

``cluster``: ``local:N`` starts a ``distributed.LocalCluster`` of N worker processes for the
run; ``tcp://HOST:PORT`` (any scheduler address) connects to a running one. Both go through
joblib's Dask backend (the ``cluster`` extra installs ``distributed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cellbag.aggregate.bags import BagSet
from cellbag.core.threads import available_cores, single_threaded
from cellbag.evaluate.errors import EvaluateError


@dataclass(frozen=True)
class StoreBags:
    """Bags a worker reads itself: a store's split, restricted to ``patients`` (in order)."""

    store: str
    encoder_id: str
    split: str
    patients: tuple[str, ...]
    digest: str

    def load(self) -> BagSet:
        from cellbag.aggregate.bags import load_bags, open_store

        data = load_bags(open_store(self.store), self.encoder_id, split=self.split)
        index = {p: i for i, p in enumerate(data.patient_ids)}
        missing = [p for p in self.patients if p not in index]
        if missing or not self.digest.startswith(data.digest):
            raise EvaluateError(
                f"{self.store}: a worker reads other bags than the run's (embeddings changed "
                "during the run, or the store path differs on the workers)"
            )
        if list(self.patients) == data.patient_ids:
            return data
        sub = data.subset([index[p] for p in self.patients])  # the leak guard's holdout
        sub.digest, sub.skipped = self.digest, data.skipped
        return sub


#: bags a worker process has read, by reference (a worker serves one run at a time)
_LOADED: dict[StoreBags, BagSet] = {}


def resolve(source: BagSet | StoreBags) -> BagSet:
    """The bags of ``source``: as given, or read once per process from the store."""
    if isinstance(source, BagSet):
        return source
    if source not in _LOADED:
        _LOADED.clear()
        _LOADED[source] = source.load()
    return _LOADED[source]


#: RSS a loky worker may gain over its first task before loky restarts it as "leaking"
#: (its default, 300 MB, is less than what torch's allocator keeps after an ensemble's fits
#: on 1,280-d bags: the benchmark's workers were restarted mid-run, each time importing
#: torch and reading the store again)
WORKER_MEMORY_SLACK = 4 * 1024**3


def _call(i: int, fn: Callable, source: Any, item: Any, threads: int | None) -> tuple[int, Any]:
    try:  # a loky worker: raise its leak threshold (read after every task, in the worker)
        from joblib.externals.loky import process_executor

        if getattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", 0) < WORKER_MEMORY_SLACK:
            process_executor._MAX_MEMORY_LEAK_SIZE = WORKER_MEMORY_SLACK
    except ImportError:  # pragma: no cover - joblib without loky
        pass
    with single_threaded(threads or 1):
        return i, fn(resolve(source), item)


def default_jobs() -> int:
    """Worker processes when ``--jobs`` is not given: every core this process may use."""
    return available_cores()


@contextmanager
def _dask_backend(cluster: str) -> Iterator[None]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise EvaluateError(
            "--cluster needs Dask's distributed: pip install 'cellbag[cluster]'"
        ) from None
    from joblib import parallel_config

    local = None
    if cluster.startswith("local:"):
        try:
            n = int(cluster.partition(":")[2])
        except ValueError:
            n = 0
        if n < 1:
            raise EvaluateError(f"--cluster {cluster}: expected local:N with N >= 1 workers")
        local = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(local)
    else:
        try:
            client = Client(cluster, timeout="20s")
        except OSError as e:
            raise EvaluateError(f"--cluster {cluster}: cannot reach the scheduler ({e})") from None
    try:
        with parallel_config(backend="dask"):
            yield
    finally:
        client.close()
        if local is not None:
            local.close()


def run_grid(
    fn: Callable[[BagSet, Any], Any],
    data: BagSet,
    items: Sequence[Any],
    jobs: int | None = None,
    cluster: str | None = None,
    threads: int | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    source: StoreBags | None = None,
) -> list[Any]:
    """``[fn(data, item) for item in items]``, the calls spread over ``jobs`` processes (or
    a cluster); ``on_done(i, result)`` is called in this process as each one finishes (in
    any order: write it, count it), and the list comes back in the order of ``items``.
    Workers read ``source`` (the same bags, from their store) when given, else get ``data``."""
    out: list[Any] = [None] * len(items)

    def done(i: int, r: Any) -> None:
        out[i] = r
        if on_done is not None:
            on_done(i, r)

    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1 and jobs != -1:
        raise EvaluateError(f"--jobs must be >= 1, got {jobs}")
    if not items:
        return out
    if cluster is None and (jobs == 1 or len(items) == 1):
        for i, item in enumerate(items):
            done(*_call(i, fn, data, item, threads))
        return out
    from joblib import Parallel, delayed

    if source is None:
        source = data

    tasks = (delayed(_call)(i, fn, source, item, threads) for i, item in enumerate(items))
    if cluster is not None:
        with _dask_backend(cluster):
            for i, r in Parallel(return_as="generator_unordered")(tasks):
                done(i, r)
        return out
    n = min(jobs if jobs > 0 else default_jobs(), len(items))
    # loky workers already cap BLAS/OpenMP at cores // n_jobs; one thread each is set per task
    for i, r in Parallel(n_jobs=n, backend="loky", return_as="generator_unordered")(tasks):
        done(i, r)
    return out
