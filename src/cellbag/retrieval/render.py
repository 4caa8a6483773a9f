"""Show a neighbours table: a montage PNG and a self-contained HTML page (the template
``templates/neighbors.html``, its CSS inlined from ``static/``; thumbnails as data URIs)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pandas as pd

from cellbag.core.io import write_bytes
from cellbag.core.templates import render
from cellbag.data.labels import label_name
from cellbag.retrieval.errors import RetrievalError


def _placeholder(size: int, text: str) -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (225, 225, 225))
    draw = ImageDraw.Draw(img)
    draw.line([(0, 0), (size, size)], fill=(180, 180, 180), width=2)
    draw.line([(0, size), (size, 0)], fill=(180, 180, 180), width=2)
    draw.text((6, size // 2 - 6), text, fill=(90, 0, 0))
    return img


def thumbnail(source: Any, size: int) -> tuple[Any, bool]:
    """A ``size``x``size`` RGB thumbnail of a path or PIL image, and whether it was found."""
    from PIL import Image

    from cellbag.retrieval.query import open_image, to_rgb

    if source is None:
        return _placeholder(size, "no image"), False
    try:
        img = to_rgb(source) if hasattr(source, "mode") else open_image(source)
    except RetrievalError:
        return _placeholder(size, "image missing"), False
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile, True


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _query_source(df: pd.DataFrame, query_image: Any) -> Any:
    if query_image is not None:
        return query_image
    return df.attrs.get("query", {}).get("path")


def _query_caption(query: dict[str, Any]) -> tuple[str, str]:
    pid = query.get("patient_id") or "new image"
    return "query", f"{pid} · {label_name(query.get('label'))}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)


def montage(
    df: pd.DataFrame,
    out: str | Path,
    *,
    query_image: Any = None,
    thumb: int = 160,
    columns: int = 6,
) -> Path:
    """Write a PNG grid: the query first (red frame), then each neighbour, captioned with
    rank, similarity, patient and label."""
    from PIL import Image, ImageDraw

    out = Path(out)
    query = df.attrs.get("query", {})
    tiles = [(thumbnail(_query_source(df, query_image), thumb)[0], *_query_caption(query), True)]
    for r in df.itertuples(index=False):
        tile, _ = thumbnail(r.path, thumb)
        tiles.append(
            (
                tile,
                f"#{r.rank}  sim {r.similarity:.3f}",
                f"{r.patient_id} · {label_name(r.label)}",
                False,
            )
        )
    pad, cap = 8, 34
    cols = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    w, h = cols * (thumb + pad) + pad, rows * (thumb + cap + pad) + pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for i, (tile, line1, line2, is_query) in enumerate(tiles):
        x = pad + (i % cols) * (thumb + pad)
        y = pad + (i // cols) * (thumb + cap + pad)
        canvas.paste(tile, (x, y))
        if is_query:
            draw.rectangle(
                [x - 3, y - 3, x + thumb + 2, y + thumb + 2], outline=(200, 30, 30), width=3
            )
        draw.text((x, y + thumb + 3), line1, fill=(0, 0, 0), font=font)
        draw.text((x, y + thumb + 18), line2, fill=(60, 60, 60), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    _atomic_write(out, buf.getvalue())
    return out


def _data_uri(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_page(
    df: pd.DataFrame,
    out: str | Path,
    *,
    query_image: Any = None,
    thumb: int = 160,
    title: str | None = None,
) -> Path:
    """Write a self-contained HTML page (thumbnails inlined as base64 PNG) showing the query
    and its neighbours as a grid of captioned images and a table."""
    out = Path(out)
    query = df.attrs.get("query", {})
    qimg, _ = thumbnail(_query_source(df, query_image), thumb)
    qdesc = query.get("cell_id") or query.get("path") or "image"
    hits = []
    for r in df.itertuples(index=False):
        img, found = thumbnail(r.path, thumb)
        hits.append(
            {
                "uri": _data_uri(img),
                "found": found,
                "rank": r.rank,
                "similarity": float(r.similarity),
                "cell_id": r.cell_id,
                "patient_id": r.patient_id,
                "label": label_name(r.label),
                "split": r.split,
                "path": r.path,
            }
        )
    meta = (
        f"store {df.attrs.get('store', '?')} · encoder {df.attrs.get('encoder_id', '?')} · "
        f"index {df.attrs.get('index_kind', '?')} · filters: {df.attrs.get('filters', 'none')} · "
        f"{len(df)} neighbours"
    )
    page = render(
        "cellbag.retrieval",
        "neighbors.html",
        title=title or f"Cells most similar to {qdesc}",
        meta=meta,
        thumb=int(thumb),
        query={
            "uri": _data_uri(qimg),
            "desc": str(qdesc),
            "patient": str(query.get("patient_id") or "new image"),
            "label": label_name(query.get("label")),
        },
        hits=hits,
    )
    _atomic_write(out, page.encode("utf-8"))
    return out
