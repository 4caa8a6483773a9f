"""Safe file writes and digests: every file cellbag writes goes to a temporary name
beside its target and is renamed onto it, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellbag.errors import CellbagError


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


# ------------------------------------------------------------------ names that become files

#: the longest id (UTF-8 bytes) that may become a file name (most file systems allow 255)
MAX_NAME_BYTES = 200


class UnsafeName(CellbagError, ValueError):
    """A name (a patient id) that cannot safely become a file name inside its folder."""


def name_problem(name: object) -> str | None:
    """Why ``name`` may not become a file name in a folder (None when it may): empty, a
    path separator, ``..``, a leading dot, a control character, over 200 UTF-8 bytes."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not text"
    if not name.strip():
        return "is empty"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "holds a path separator"
    if ".." in name:
        return "holds '..'"
    if name.startswith("."):
        return "starts with a dot"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        return f"holds the control character U+{ord(bad):04X}"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def shown_name(name: object, limit: int = 60) -> str:
    """``name`` for a one-line message: quoted, control characters escaped, shortened."""
    text = repr(name if isinstance(name, str) else str(name))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def safe_child(
    folder: str | os.PathLike,
    name: str,
    suffix: str = "",
    *,
    error: type[Exception] = UnsafeName,
    what: str = "patient",
) -> Path:
    """``folder / (name + suffix)`` for a file named after an id, refusing (``error``, one
    line naming the id) a name that is not a plain file name or whose resolved path leaves
    ``folder`` (a symbolic link pointing out of it included). Every writer of an id-named
    file uses it."""
    folder = Path(folder)
    why = name_problem(name) or name_problem(name + suffix)
    child = folder / f"{name}{suffix}"
    if why is None:
        root = folder.resolve()
        resolved = child.resolve()
        if resolved.parent != root:
            why = f"resolves to {resolved}, outside {root}"
    if why is not None:
        raise error(f"{folder}: {what} {shown_name(name)} cannot name a file here: it {why}")
    return child


def refuse_foreign_folder(
    folder: str | os.PathLike,
    *,
    ours: Callable[[Path], bool],
    what: str,
    error: type[Exception] = UnsafeName,
) -> None:
    """Refuse (``error``, one line naming its first entry) an existing, non-empty folder
    that ``ours`` does not recognise as one cellbag wrote: an output goes to a new or empty
    folder, or over cellbag's own earlier output, never over a user's files."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    entries = sorted(os.listdir(folder))
    if entries and not ours(folder):
        raise error(
            f"{folder}: not empty and not a {what} (it holds {entries[0]!r}); refusing to "
            "write into it: choose a new or empty folder"
        )


def file_head_contains(path: str | os.PathLike, text: str, within: int = 4096) -> bool:
    """Whether ``text`` occurs in the first ``within`` bytes of the file at ``path``."""
    try:
        with open(path, "rb") as fh:
            return text.encode() in fh.read(within)
    except OSError:
        return False
