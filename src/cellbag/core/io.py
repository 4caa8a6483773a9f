"""Safe file writes and digests: every file cellbag writes goes to a temporary name
beside its target and is renamed onto it, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that infer a format from
    it still work); renamed onto ``path`` when the block ends, removed if it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, doc: Any, indent: int = 2) -> None:
    """Write ``doc`` as JSON (non-JSON values as ``str``, NaN kept) atomically."""
    write_text(path, json.dumps(doc, indent=indent, default=str, allow_nan=True) + "\n")


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez`` to ``path`` atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike, **metadata: Any) -> str:
    """Save torch tensors (moved to CPU, contiguous) with string metadata atomically;
    returns the file's sha256."""
    from safetensors.torch import save

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    blob = save(data, metadata={k: str(v) for k, v in metadata.items()} or None)
    write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
