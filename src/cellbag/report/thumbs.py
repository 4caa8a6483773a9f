"""Cell images for the report, written once each: a thumbnail under ``REPORT_DIR/thumbs/``
(shown at 128 px: large enough to judge chromatin on 224 px crops) and a copy of the original
under ``REPORT_DIR/cells/`` (the click-through), so the report stays self-contained."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cellbag.core.io import atomic_path

#: stored thumbnail size; pages show them at DISPLAY_SIZE css px (sharper on dense screens)
THUMB_SIZE = 192
DISPLAY_SIZE = 128


def thumb_name(cell_id: str) -> str:
    """A stable, file-system-safe name for a cell's thumbnail (readable prefix + digest)."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", cell_id)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[-48:].strip("._") or "cell"
    digest = hashlib.sha1(cell_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}.jpg"


def _original_name(cell_id: str, path: str) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    ext = ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".img"
    return thumb_name(cell_id)[: -len(".jpg")] + ext


NO_IMAGE = "no image (features imported from another tool)"


class Thumbnails:
    """Names each cell's thumbnail and original copy when asked (``get``), writes them all at
    once (``write``, with progress) and remembers the cells it could not read."""

    def __init__(self, out_dir: Path, size: int = THUMB_SIZE) -> None:
        self.out = Path(out_dir)
        self.dir = self.out / "thumbs"
        self.size = size
        self._pending: dict[str, str] = {}  # cell_id -> source path
        self.missing: dict[str, str] = {}  # cell_id -> reason
        self.written = 0

    def get(self, cell_id: str, path: str | os.PathLike[str]) -> str:
        """Relative URL (``thumbs/...``) of the cell's thumbnail (written by ``write``)."""
        self._pending.setdefault(cell_id, str(path))
        return f"thumbs/{thumb_name(cell_id)}"

    def original(self, cell_id: str) -> str | None:
        """Relative URL (``cells/...``) of the copy of the cell's original image."""
        path = self._pending.get(cell_id)
        return None if path is None else f"cells/{_original_name(cell_id, path)}"

    def write(self, progress: bool = False) -> None:
        """Write every thumbnail and original copy not yet on disk."""
        from cellbag.core.progress import progress_bar

        todo = [
            (c, p)
            for c, p in self._pending.items()
            if c not in self.missing
            and not (
                (self.dir / thumb_name(c)).is_file()
                and (self.out / "cells" / _original_name(c, p)).is_file()
            )
        ]
        if not todo:
            return
        with progress_bar("cells", enabled=progress) as bar:
            task = bar.add_task("report thumbnails", total=len(todo))
            for cell_id, path in todo:
                self._write_one(cell_id, path)
                bar.advance(task)

    def _write_one(self, cell_id: str, path: str) -> None:
        if path in ("", "nan"):  # features imported from another tool: no image
            self.missing[cell_id] = NO_IMAGE
            return
        dest = self.dir / thumb_name(cell_id)
        orig = self.out / "cells" / _original_name(cell_id, path)
        try:
            if not dest.is_file():
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
                    self.dir.mkdir(parents=True, exist_ok=True)
                    with atomic_path(dest) as tmp:
                        im.save(tmp, format="JPEG", quality=90)
                    self.written += 1
            if not orig.is_file():
                orig.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(orig) as tmp:
                    shutil.copyfile(path, tmp)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            self.missing[cell_id] = f"{path}: {reason}"
