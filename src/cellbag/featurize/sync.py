"""Keeping a store in step with its cohort during featurize: refuse, or update (``--update``).

The store side (what changed, rewriting the tables, un-marking blocks) is
:mod:`cellbag.store.sync`; here the encoders recorded in the store are rebuilt and
their un-marked blocks recomputed, so no encoder serves embeddings of an old image.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cellbag.errors import CellbagError
from cellbag.store import Store
from cellbag.store.feature_store import remove_store
from cellbag.store.sync import SyncDiff, apply_update, compare

if TYPE_CHECKING:
    from cellbag.data import Cohort
    from cellbag.featurize.registry import Encoder


def check_sync(
    store: Store, cohort: Cohort, *, update: bool, force: bool
) -> tuple[Store | None, SyncDiff]:
    """Compare; refuse a changed cohort, or apply the change with ``update``.

    Returns ``(None, diff)`` when the store held another cohort and ``force`` removed it
    (the caller creates a new one).
    """
    from cellbag.featurize.errors import FeaturizeError

    diff = compare(store, cohort)
    kept = diff.overlap - len(diff.changed)
    same_root = str(store.attrs["cohort"].get("root")) == str(cohort.root)
    if kept == 0 or (kept * 2 < store.n_cells and not same_root):
        if force:
            # checked before deleting: only a store's own entries go, and the new one fits
            remove_store(store.path, replacing_with=cohort)
            return None, diff
        a = store.attrs["cohort"]
        raise FeaturizeError(
            f"{store.path}: store was made from another cohort ({a['root']}, "
            f"{a['n_cells']} cells), not {cohort.root} ({cohort.n_cells} cells); use a new "
            "store path (or --force to replace this store)"
        )
    if not diff.in_sync:
        if not update:
            encoders = store.encoders()
            what = (
                f"re-embed them for every encoder in the store ({len(encoders)})"
                if diff.images_changed
                else "update the store's patient table"
            )
            raise FeaturizeError(
                f"{store.path}: the cohort changed since the store read it: {diff.summary()}; "
                f"rerun with --update to {what}"
            )
        job = uuid.uuid4().hex
        locks = []
        try:
            for eid in store.encoders():  # no job may write an encoder while rows change
                locks.append(store.lock(eid, job_id=job).acquire())
            store = apply_update(store, cohort, diff)
        finally:
            for lock in locks:
                lock.release()
        return store, diff
    if diff.moved:
        store.update_paths(cohort.cells["path"])  # the cohort moved: same bytes, new place
    if len(diff.touched_rows):
        store.record_files(diff.touched_rows, size=diff.touched_size, mtime_ns=diff.touched_mtime)
    recorded = [s.get("sha256") for s in store.attrs["cohort"].get("sources", [])]
    if recorded != [s["sha256"] for s in _sources(cohort)]:
        store.set_cohort(cohort)  # e.g. a CSV re-saved with the same values
    return store, diff


def _sources(cohort: Cohort) -> list[dict]:
    from cellbag.store.feature_store import cohort_attrs

    return cohort_attrs(cohort)["sources"]


def refresh_encoders(
    store: Store,
    done: Encoder,
    *,
    featurize: Callable[..., Any],
    batch_size: int,
    workers: int | None,
    progress: bool,
) -> list[str]:
    """Recompute the un-marked blocks of every other unfinished encoder of the store with
    ``featurize`` (the pipeline's ``run_featurize``, passed in: this module sits below it)."""
    from cellbag.featurize.errors import FeaturizeError
    from cellbag.featurize.registry import encoder_from_metadata

    refreshed = []
    for eid in store.encoders():
        if eid == done.id or store.is_complete(eid):
            continue
        try:
            enc = encoder_from_metadata(store.encoder_info(eid), device=done.device)
        except CellbagError as e:
            raise FeaturizeError(
                f"{store.path}: cannot rebuild encoder {eid} to re-embed the changed cells "
                f"({e}); its changed blocks stay unfinished"
            ) from None
        featurize(None, store.path, enc, batch_size=batch_size, workers=workers, progress=progress)
        refreshed.append(eid)
    return refreshed
