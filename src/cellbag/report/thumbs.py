"""Cell thumbnails for the report, written once each under ``REPORT_DIR/thumbs/``."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cellbag.core.io import atomic_path

THUMB_SIZE = 112


def thumb_name(cell_id: str) -> str:
    """A stable, file-system-safe name for a cell's thumbnail (readable prefix + digest)."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", cell_id)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[-48:].strip("._") or "cell"
    digest = hashlib.sha1(cell_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}.jpg"


class Thumbnails:
    """Writes each cell's thumbnail at most once and remembers the cells it could not read."""

    def __init__(self, out_dir: Path, size: int = THUMB_SIZE) -> None:
        self.dir = Path(out_dir) / "thumbs"
        self.size = size
        self._done: dict[str, str | None] = {}
        self.missing: dict[str, str] = {}  # cell_id -> reason
        self.written = 0

    def get(self, cell_id: str, path: str | os.PathLike[str]) -> str | None:
        """Relative URL (``thumbs/...``) of the cell's thumbnail, or None when unreadable."""
        if cell_id in self._done:
            return self._done[cell_id]
        rel = f"thumbs/{thumb_name(cell_id)}"
        dest = self.dir / thumb_name(cell_id)
        url: str | None = rel
        if not dest.is_file():
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
                    self.dir.mkdir(parents=True, exist_ok=True)
                    with atomic_path(dest) as tmp:
                        im.save(tmp, format="JPEG", quality=88)
                    self.written += 1
            except (OSError, UnidentifiedImageError, ValueError) as e:
                reason = getattr(e, "strerror", None) or type(e).__name__
                self.missing[cell_id] = f"{path}: {reason}"
                url = None
        self._done[cell_id] = url
        return url
