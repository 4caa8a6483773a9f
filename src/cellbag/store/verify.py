"""Check a store end to end: done marks, chunk files, crc32c checksums, finite values.

:func:`verify` reads every chunk of every encoder (``cellbag store verify``);
:func:`quick_check` only compares done marks with the chunk files present (what
``cellbag store info`` does before it calls an encoder complete).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellbag.store.errors import StoreError
from cellbag.store.feature_store import (
    STATUS_OK,
    STATUS_PENDING,
    Store,
    chunk_error,
    new_array,
)

if TYPE_CHECKING:
    from cellbag.data import Cohort
    from cellbag.store.sync import SyncDiff


@dataclass
class Finding:
    """One problem of an encoder: what, at which rows, for which patients."""

    what: str
    rows: tuple[int, int]
    patients: list[str]
    array: str = "data"
    """The damaged array: ``data``, or ``status`` / ``done`` (rewritten by repair)."""

    def __str__(self) -> str:
        who = ", ".join(self.patients[:5]) + (" ..." if len(self.patients) > 5 else "")
        return f"{self.what} (rows {self.rows[0]}-{self.rows[1] - 1}; patients {who})"


@dataclass
class EncoderCheck:
    """What verify found for one encoder."""

    encoder_id: str
    done_blocks: int
    n_blocks: int
    complete: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.complete and not self.findings

    @property
    def patients(self) -> list[str]:
        return sorted({p for f in self.findings for p in f.patients})


@dataclass
class VerifyReport:
    """Per encoder findings, and the cohort's sync state when a cohort was given."""

    store: str
    encoders: list[EncoderCheck]
    sync: SyncDiff | None = None

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.encoders) and (self.sync is None or self.sync.in_sync)


def _chunk_file(store: Store, encoder_id: str, chunk: int) -> Path | None:
    root = store._local_root()
    if root is None:
        return None
    return root / "embeddings" / encoder_id / "data" / "c" / str(chunk) / "0"


def _writes_every_chunk(store: Store, encoder_id: str) -> bool:
    """Format 2 encoders write every chunk; format 1 ones skipped all-NaN chunks."""
    g = store.zarr_group["embeddings"][encoder_id]
    return "status" in g.attrs.get("arrays", [])


def quick_check(
    store: Store, encoder_id: str, done: Sequence[bool | None] | None = None
) -> list[Finding]:
    """Done blocks whose chunk files are missing (local stores; no chunk is read)."""
    found: list[Finding] = []
    if done is None:  # `store info`: done marks and status are read (and checked) too
        store.encoder_status(encoder_id)
        done = store.done_blocks(encoder_id)
    if store._local_root() is None or not _writes_every_chunk(store, encoder_id):
        return found
    done = [bool(d) for d in done]
    rows = store.chunk_rows
    per_block = store.block_rows // rows
    for b in np.flatnonzero(done):
        for c in range(b * per_block, (b + 1) * per_block):
            a = c * rows
            if a >= store.n_cells:
                break
            f = _chunk_file(store, encoder_id, c)
            if f is not None and not f.exists():
                z = min(a + rows, store.n_cells)
                found.append(
                    Finding(
                        f"chunk {c} is missing", (a, z), store.patients_of_rows(np.arange(a, z))
                    )
                )
    return found


def _marks(store: Store, encoder_id: str, add: Callable[[Finding], None]) -> tuple:
    """Each block's done mark and its cells' status, read block by block: a missing or
    unreadable chunk of either is a finding (``None`` for that block), never a fill value."""
    done: list[bool | None] = []
    status: list[np.ndarray | None] = []
    for b in range(store.n_blocks):
        a, z = store.block_range(b)
        pids = store.patients_of_rows(np.arange(a, z))
        try:
            d = store._load(f"embeddings/{encoder_id}/done", slice(b, b + 1))[0]
            if d not in (0, 1):
                raise StoreError(f"done mark {d}")
            done.append(bool(d))
        except StoreError as e:
            add(Finding(f"done mark unreadable ({_short(e)})", (a, z), pids, "done"))
            done.append(None)
        try:
            status.append(store._load(f"embeddings/{encoder_id}/status", slice(a, z)))
        except StoreError as e:
            add(Finding(f"status chunk unreadable ({_short(e)})", (a, z), pids, "status"))
            status.append(None)
    return done, status


def _short(error: Exception) -> str:
    text = str(error).split("; run `", 1)[0]
    return text.split(": ", 2)[-1] if ": " in text else text


def check_encoder(store: Store, encoder_id: str) -> EncoderCheck:
    """Read every chunk of one encoder and check it."""
    store._group(encoder_id)
    complete = store.zarr_group["embeddings"][encoder_id].attrs.get("completed") is not None
    check = EncoderCheck(encoder_id, 0, store.n_blocks, complete)
    add = check.findings.append
    done, status = _marks(store, encoder_id, add)
    check.done_blocks = sum(bool(d) for d in done)
    try:
        arr = store.embeddings(encoder_id)
    except StoreError as e:
        add(Finding(_short(e), (0, store.n_cells), [], "data"))
        check.complete = False
        return check
    missing = {f.rows[0] for f in quick_check(store, encoder_id, done)}
    if complete and not all(d is not None and d for d in done):
        check.complete = False
        add(Finding("marked complete, but blocks are not done", (0, store.n_cells), []))
    for b in range(store.n_blocks):
        a, z = store.block_range(b)
        st = status[b]
        if done[b] is None or st is None:
            continue
        if not done[b]:
            add(
                Finding(
                    "block not written yet (unfinished)",
                    (a, z),
                    store.patients_of_rows(np.arange(a, z)),
                )
            )
            continue
        if (st == STATUS_PENDING).any():
            bad = a + np.flatnonzero(st == STATUS_PENDING)
            add(Finding("done mark, but cells not embedded", (a, z), store.patients_of_rows(bad)))
        for c0 in range(a, z, store.chunk_rows):
            c1 = min(c0 + store.chunk_rows, z)
            pids = store.patients_of_rows(np.arange(c0, c1))
            if c0 in missing:
                add(Finding(f"chunk {c0 // store.chunk_rows} is missing", (c0, c1), pids))
                continue
            try:
                x = np.asarray(arr[c0:c1], dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - any decode failure is a finding
                add(Finding(chunk_error(e), (c0, c1), pids))
                continue
            ok = st[c0 - a : c1 - a] == STATUS_OK
            bad = ok & ~np.isfinite(x).all(axis=1)
            if bad.any():
                rows = c0 + np.flatnonzero(bad)
                add(
                    Finding(
                        f"{int(bad.sum())} embedded cell(s) hold non-finite values",
                        (c0, c1),
                        store.patients_of_rows(rows),
                    )
                )
    return check


def verify(store: Store, cohort: Cohort | None = None) -> VerifyReport:
    """Check every encoder of ``store`` (and, given a cohort, whether it is in sync)."""
    report = VerifyReport(store.path, [check_encoder(store, e) for e in store.encoders()])
    if cohort is not None:
        from cellbag.store.sync import compare

        report.sync = compare(store, cohort)
    return report


def _drop(store: Store, group: Any, key: str) -> None:
    """Remove the array at ``key`` (``group`` holds it), even one whose metadata is garbage."""
    name = key.rsplit("/", 1)[1]
    try:
        del group[name]
        return
    except KeyError:
        return
    except Exception:  # noqa: BLE001 - its zarr.json does not parse: remove its files
        pass
    root = store._local_root()
    if root is not None:
        shutil.rmtree(root / key, ignore_errors=True)
    else:
        from zarr.core.sync import sync

        sync(group.store.delete_dir(key))


def repair(store: Store, check: EncoderCheck) -> list[int]:
    """Un-mark the blocks holding ``check``'s damaged rows, so featurize recomputes only them
    (a damaged status or done chunk is rewritten as 'not yet'; a missing or unreadable
    status / done array is made again, every block un-marked)."""
    eid = check.encoder_id
    g = store.zarr_group["embeddings"][eid]
    remade = set()
    for name, initial, chunks in (
        ("status", STATUS_PENDING, store.block_rows),
        ("done", 0, 1),
    ):
        try:
            g[name].fill_value  # noqa: B018 - opens its metadata
        except Exception:  # noqa: BLE001 - missing, or its zarr.json unreadable
            _drop(store, g, f"embeddings/{eid}/{name}")
            shape = (store.n_cells if name == "status" else store.n_blocks,)
            new_array(g, name, shape=shape, dtype="uint8", chunks=(chunks,), initial=initial)
            remade.add(name)
    blocks = sorted(
        {
            b
            for f in check.findings
            for b in range(f.rows[0] // store.block_rows, (f.rows[1] - 1) // store.block_rows + 1)
        }
    )
    if "done" in remade:
        blocks = list(range(store.n_blocks))
    for f in check.findings:
        if f.array == "status" and "status" not in remade:
            g["status"][f.rows[0] : f.rows[1]] = STATUS_PENDING
    if blocks or check.done_blocks < check.n_blocks or remade:
        store.reset_blocks(eid, blocks)
        store.update_encoder_attrs(eid, completed=None)
    return blocks
