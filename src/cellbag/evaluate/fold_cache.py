"""The fold cache: each finished outer fold of a head is kept as
``RUN_DIR/<head>/folds/r<repeat>_f<fold>.json``, under a key of everything that changes its
numbers (head settings, clinical, encoder, embeddings digest, splits, seed, inner folds).
A rerun with the same key reuses the folds it finds (an interrupted run resumes where it
stopped, whatever number of workers either run had); a changed key clears them first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cellbag.aggregate.bags import BagSet
from cellbag.evaluate.run_folder import CONFIG_FILE, SPLITS, write_json


def data_digest(data: BagSet) -> str:
    """The embeddings digest of a store's bags, or a digest of in-memory arrays."""
    if data.digest:
        return data.digest
    h = hashlib.sha256()
    for b in data.bags:
        h.update(np.ascontiguousarray(b).tobytes())
    if data.clinical_matrix is not None:
        h.update(np.ascontiguousarray(data.clinical_matrix).tobytes())
    return h.hexdigest()[:16]


def fold_key(head: str, settings: dict, cfg: Any, clinical: bool, data: BagSet) -> dict:
    """What a head's folds depend on (compared as JSON with the cached one)."""
    return {
        "head": head,
        "params": settings,
        "clinical": clinical,
        "encoder_id": data.encoder_id,
        "embeddings_digest": data_digest(data),
        "splits": SPLITS,
        "folds": cfg.folds,
        "repeats": cfg.repeats,
        "inner_folds": cfg.inner_folds,
        "seed": cfg.seed,
    }


class FoldCache:
    """The finished folds of one head in ``head_dir``, valid for ``key``."""

    def __init__(self, head_dir: Path, key: dict) -> None:
        self.head_dir = Path(head_dir)
        self.key = key
        self.folder = self.head_dir / "folds"

    def open(self) -> str | None:
        """Clear folds cached under another key (returns a note saying so), then mark the
        head as running."""
        note = None
        old = self.head_dir / CONFIG_FILE
        if old.is_file():
            try:
                same = json.loads(old.read_text()).get("key") == json.loads(json.dumps(self.key))
            except ValueError:
                same = False
            if not same and self.folder.exists():
                note = f"{self.head_dir}: settings changed, recomputing its folds"
                for done in self.folder.glob("r*_f*.json"):  # its own files, nothing else
                    done.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(old, {"key": self.key, "state": "running"})
        return note

    def path(self, repeat: int, fold: int) -> Path:
        return self.folder / f"r{repeat}_f{fold}.json"

    def get(self, repeat: int, fold: int) -> dict | None:
        path = self.path(repeat, fold)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, rec: dict) -> None:
        write_json(self.path(rec["repeat"], rec["fold"]), rec)
