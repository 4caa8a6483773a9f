"""Is a store in sync with its cohort? What changed, and bringing the store's tables up to date.

A store records what each image held when an encoder read it (sha256, size, mtime) and the
digest of the label/clinical table. :func:`compare` looks at the cohort as it is now: size
and mtime first (a ``stat`` per file), the sha256 only where they differ, so a check of an
unchanged cohort reads no image. :func:`apply_update` then rewrites the store's tables and
un-marks the blocks that hold changed cells in every encoder, so the next featurize run of
each encoder recomputes exactly those blocks (bit-identical to a fresh run). When cells are
added or removed, rows move: the store is rebuilt beside itself, blocks whose cells are all
unchanged are copied, and the new store takes the old one's place.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellbag.data.cohort import clinical_rows
from cellbag.errors import CellbagError
from cellbag.store.errors import StoreError
from cellbag.store.feature_store import (
    CREATE_LOCK,
    SIZE_MISSING,
    SIZE_UNRECORDED,
    STATUS_PENDING,
    STORE_ENTRIES,
    Store,
    check_replaceable,
    remove_store,
)

if TYPE_CHECKING:
    from cellbag.data import Cohort

UPDATE_SUFFIX = ".cellbag-update"
OLD_SUFFIX = ".cellbag-old"
_ENCODER_KEYS = ("generation", "created", "completed", "completion_id", "arrays", "last_run")


def file_digest(path: str | os.PathLike) -> str:
    """The digest the store records for an image: sha256 of its bytes, 16 hex digits."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _names(items: list[str], k: int = 3) -> str:
    more = ", ..." if len(items) > k else ""
    return ", ".join(items[:k]) + more


@dataclass
class SyncDiff:
    """How a cohort differs from what its store holds."""

    changed: list[str] = field(default_factory=list)  # cell ids whose file content differs
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    clinical: list[str] = field(default_factory=list)  # patients with other label/values
    dropped_patients: list[str] = field(default_factory=list)  # no longer in the cohort
    moved: bool = False  # same cells, other paths
    layout_changed: bool = False  # rows move: the store must be rebuilt
    touched_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    touched_size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    touched_mtime: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    overlap: int = 0  # cells common to both

    @property
    def in_sync(self) -> bool:
        return not (self.changed or self.added or self.removed or self.clinical)

    @property
    def images_changed(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def summary(self) -> str:
        """One line: counts and the first few names."""
        parts = []
        if self.images_changed:
            names = self.changed + self.added + self.removed
            parts.append(
                f"{len(self.changed)} changed, {len(self.added)} added, {len(self.removed)} "
                f"removed image(s) ({_names(names)})"
            )
        if self.clinical:
            parts.append(
                f"label/clinical rows of {len(self.clinical)} patient(s) changed "
                f"({_names(self.clinical)})"
            )
        return "; ".join(parts) if parts else "in sync"


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return SIZE_MISSING, SIZE_MISSING
    return int(st.st_size), int(st.st_mtime_ns)


def _check_file(
    path: str, sha: str, size: int, mtime: int, full: bool = False
) -> tuple[bool, tuple[int, int] | None]:
    """Whether an image differs from what the store recorded (a ``stat``; its bytes are
    hashed only when size or mtime moved, or ``full``), and its new (size, mtime) to
    record when only those moved."""
    cur = _stat(path)
    if size != SIZE_UNRECORDED:  # format 1 stores recorded digests only
        if SIZE_MISSING in (cur[0], size):
            return cur[0] != size, None
        if not full and cur == (size, mtime):
            return False, None
    try:
        digest = file_digest(path)
    except OSError:
        digest = ""
    if digest != sha:
        return True, None
    return False, (cur if cur != (size, mtime) else None)


def images_out_of_sync(store: Store) -> str | None:
    """Why the store's embeddings may be stale: images changed (other bytes) or removed
    since they were read, found with the same cheap check as featurize (a ``stat`` per
    image, a hash only when size or mtime moved). None when none changed, for imported
    features, or when no image can be seen from here (a copied store)."""
    if store.imported:
        return None
    cells = store.cells()
    rec = store.file_records()
    seen, changed, gone = 0, [], []
    for cid, path, sha, size, mtime in zip(
        cells["cell_id"], cells["path"], rec["sha256"], rec["size"], rec["mtime_ns"], strict=True
    ):
        if size == SIZE_UNRECORDED and not sha:
            continue  # never read: nothing embedded from it
        if size != SIZE_MISSING and _stat(path)[0] == SIZE_MISSING:
            gone.append(cid)
            continue
        seen += 1
        if _check_file(path, sha, int(size), int(mtime))[0]:
            changed.append(cid)
    if not seen or not (changed or gone):
        return None
    return (
        f"{len(changed)} image(s) changed and {len(gone)} removed since they were embedded "
        f"({_names(changed + gone)})"
    )


def _refuse(store: Store, why: str | None, then: str) -> None:
    """Raise :class:`StoreError`: ``why``, the update command, then ``then``."""
    if why is not None:
        root = store.attrs.get("cohort", {}).get("root", "DATA")
        raise StoreError(
            f"{store.path}: {why}; apply it with `cellbag featurize {root} {store.path} "
            f"--update` {then}"
        )


def require_images_in_sync(store: Store) -> None:
    """Raise :class:`StoreError` (one line) if :func:`images_out_of_sync` finds stale images."""
    _refuse(
        store,
        images_out_of_sync(store),
        "(its embeddings are stale; --allow-stale uses them as they are)",
    )


def compare(store: Store, cohort: Cohort, full: bool = False) -> SyncDiff:
    """What differs between ``store`` and ``cohort`` as it is now on disk.

    An image whose size and mtime are those recorded is taken as unchanged (cheap: one
    ``stat``), unless ``full``: then every image is hashed again and compared."""
    cells = store.cells()
    rec = store.file_records()
    old_ids = cells["cell_id"].to_numpy(dtype=object)
    new_ids = cohort.cells["cell_id"].astype(str).to_numpy(dtype=object)
    new_paths = cohort.cells["path"].astype(str).to_numpy(dtype=object)
    old_pos = {c: i for i, c in enumerate(old_ids)}
    new_set = set(new_ids)
    diff = SyncDiff(
        added=[c for c in new_ids if c not in old_pos],
        removed=[c for c in old_ids if c not in new_set],
        layout_changed=store.fingerprint != cohort.fingerprint(),
    )
    sha = rec["sha256"].to_numpy(dtype=object)
    size = rec["size"].to_numpy()
    mtime = rec["mtime_ns"].to_numpy()
    old_paths = cells["path"].to_numpy(dtype=object)
    touched: list[tuple[int, int, int]] = []
    for j, cid in enumerate(new_ids):
        i = old_pos.get(cid)
        if i is None:
            continue
        diff.overlap += 1
        diff.moved |= old_paths[i] != new_paths[j]
        if size[i] == SIZE_UNRECORDED and not sha[i]:
            continue  # no encoder has read it yet: nothing can be stale
        changed, stat = _check_file(new_paths[j], sha[i], size[i], mtime[i], full)
        if changed:
            diff.changed.append(cid)
        elif stat is not None:
            touched.append((i, *stat))  # same bytes, new mtime (a copy, a touch)
    if touched:
        t = np.asarray(touched, dtype=np.int64)
        diff.touched_rows, diff.touched_size, diff.touched_mtime = t[:, 0], t[:, 1], t[:, 2]
    old = clinical_rows(store.patients())
    new = clinical_rows(cohort.patients)
    diff.clinical = [p for p, row in new.items() if p in old and old[p] != row]
    diff.dropped_patients = [p for p in old if p not in new]
    return diff


# ---------------------------------------------------------------- labels (for cv)


def labels_out_of_sync(store: Store) -> str | None:
    """Why the store's labels may no longer be the cohort's, or None.

    Cheap when nothing changed (the recorded CSV digests match). None also when the
    cohort's tables cannot be seen from here (a copied store): the store is the source.
    """
    c = store.attrs.get("cohort", {})
    sources = c.get("sources") or []
    if not sources:
        return None
    digests = []
    for src in sources:
        try:
            digests.append(file_digest(src["path"]))
        except OSError:
            return None
    if all(d == src.get("sha256") for d, src in zip(digests, sources, strict=True)):
        return None
    from cellbag.data import read_challenge, read_manifest

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if c.get("layout") == "manifest":
                clinical = sources[1]["path"] if len(sources) > 1 else None
                cohort = read_manifest(sources[0]["path"], clinical)
            else:
                cohort = read_challenge(c["root"])
    except CellbagError as e:
        return f"the cohort's label table changed and no longer reads ({e})"
    old = clinical_rows(store.patients())
    new = clinical_rows(cohort.patients)
    changed = [p for p, row in old.items() if new.get(p) != row]
    if not changed:
        return None
    return (
        f"the label/clinical table of {c.get('root')} changed since the store was made "
        f"({len(changed)} patient(s): {_names(changed)})"
    )


def require_labels_in_sync(store: Store) -> None:
    """Raise :class:`StoreError` if the cohort's labels changed since the store recorded them."""
    _refuse(
        store,
        labels_out_of_sync(store),
        "(the store's patient table is what cross-validation trains on)",
    )


# ---------------------------------------------------------------- update


def apply_update(store: Store, cohort: Cohort, diff: SyncDiff) -> Store:
    """Bring the store's tables to ``cohort`` and un-mark the blocks to recompute.

    The caller holds every encoder's lock. Returns the (possibly rebuilt) store; its
    encoders' missing blocks are then computed by featurize.
    """
    if diff.layout_changed:
        return _rebuild(store, cohort, diff)
    pos = {c: i for i, c in enumerate(store.cells()["cell_id"])}
    rows = np.asarray(sorted(pos[c] for c in diff.changed), dtype=np.int64)
    blocks = np.unique(rows // store.block_rows)
    for eid in store.encoders():  # first: nothing stale stays marked done
        store.reset_blocks(eid, blocks.tolist())
    n = len(rows)
    store.record_files(
        rows, [""] * n, [SIZE_UNRECORDED] * n, [SIZE_UNRECORDED] * n
    )  # the next read records the new content
    store.record_files(diff.touched_rows, size=diff.touched_size, mtime_ns=diff.touched_mtime)
    store.update_paths(cohort.cells["path"])
    if diff.clinical:
        store.write_patients(cohort)
    store.set_cohort(cohort)
    return store


def _clear_leftover(path: str) -> None:
    """Remove an earlier, interrupted update's store (never anything else)."""
    if not os.path.exists(path):
        return
    if Store.exists(path):
        remove_store(path)
        return
    entries = set(os.listdir(path))
    if entries <= {*STORE_ENTRIES, CREATE_LOCK}:
        import shutil

        shutil.rmtree(path)
        return
    raise StoreError(f"{path}: in the way of the update and not a cellbag store; move it away")


def _rebuild(store: Store, cohort: Cohort, diff: SyncDiff) -> Store:
    """A new store for ``cohort`` beside ``store``, unchanged blocks copied, then swapped in."""
    if "://" in store.path:
        raise StoreError(f"{store.path}: cells were added or removed; update a local store only")
    check_replaceable(store.path)  # the folder is swapped whole: a user's file would move
    tmp = store.path + UPDATE_SUFFIX
    _clear_leftover(tmp)
    new = Store.create(tmp, cohort, chunk_rows=store.chunk_rows, block_rows=store.block_rows)
    old_cells = store.cells()
    pos = {c: i for i, c in enumerate(old_cells["cell_id"])}
    changed = set(diff.changed)
    src = np.asarray(
        [-1 if c in changed else pos.get(c, -1) for c in new.cells()["cell_id"]], dtype=np.int64
    )
    rec = store.file_records()
    if len(diff.touched_rows):
        rec.loc[diff.touched_rows, "size"] = diff.touched_size
        rec.loc[diff.touched_rows, "mtime_ns"] = diff.touched_mtime
    keep = np.flatnonzero(src >= 0)
    new.record_files(
        keep,
        rec["sha256"].to_numpy()[src[keep]],
        rec["size"].to_numpy()[src[keep]],
        rec["mtime_ns"].to_numpy()[src[keep]],
    )
    reason = old_cells["reason"].to_numpy(dtype=object)
    for eid in store.encoders():
        g = store.zarr_group["embeddings"][eid]
        meta = {k: v for k, v in g.attrs.items() if k not in _ENCODER_KEYS}
        new.init_encoder(eid, int(g.attrs["dim"]), meta)
        status = store.encoder_status(eid)
        done = store.done_blocks(eid)
        for b in range(new.n_blocks):
            a, z = new.block_range(b)
            s = src[a:z]
            if (s < 0).any() or (status[s] == STATUS_PENDING).any():
                continue
            if not done[s // store.block_rows].all():
                continue
            lo, hi = int(s.min()), int(s.max()) + 1
            data = store._read_rows(eid, lo, hi)[s - lo]  # checked: no corrupt row is carried
            new.write_block(
                eid,
                b,
                data,
                status=status[s],
                reason=reason[s],
                sha256=rec["sha256"].to_numpy()[s],
                size=rec["size"].to_numpy()[s],
                mtime_ns=rec["mtime_ns"].to_numpy()[s],
            )
        new.mark_complete(eid)
    _swap(store.path, tmp)
    return Store.open(store.path, mode="r+")


def _swap(path: str, tmp: str) -> None:
    """Put the rebuilt store at ``path``; the old one goes (it was a cellbag store)."""
    old = path + OLD_SUFFIX
    _clear_leftover(old)
    os.rename(path, old)
    os.rename(tmp, path)
    remove_store(old)


def recover_swap(path: str | os.PathLike) -> bool:
    """Finish an update killed between its two renames; True if one was finished."""
    path = os.fspath(path)
    if "://" in path or os.path.exists(path):
        return False
    tmp, old = path + UPDATE_SUFFIX, path + OLD_SUFFIX
    if Store.exists(tmp) and Store.exists(old):
        os.rename(tmp, path)
        remove_store(old)
        return True
    return False
