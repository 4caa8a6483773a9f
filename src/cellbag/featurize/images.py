"""Reading cell images: EXIF orientation applied, any PIL mode to RGB, resized to the
encoder's input, as uint8.

Decoding happens in worker threads (PIL releases the GIL while decoding and resizing);
normalisation happens later on the model's device, on whole batches.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from cellbag.data.inspect import image_error_text

# Part of every encoder's identity: bump when decoding/conversion changes the pixels.
# 2: EXIF orientation is applied (ImageOps.exif_transpose) before conversion.
PREPROCESSING_VERSION = 2
PREPROCESSING = "EXIF orientation applied, RGB"

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha is composited on white, 16-bit/float
    grayscale is rescaled to 0..255, palette and CMYK are converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if img.mode.startswith("I;16") and lo >= 0 and hi <= 65535:
            lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        g = np.clip((a - lo) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(g, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def centre_box(width: int, height: int, crop: float) -> tuple[int, int, int, int]:
    """The centred square of side ``crop`` x the shorter side, as a PIL box."""
    side = max(1, int(round(min(width, height) * crop)))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def prepare(
    img: Image.Image, size: int, interpolation: str = "bicubic", crop: float = 1.0
) -> np.ndarray:
    """RGB ``(size, size, 3)`` uint8 array of ``img`` (upright, converted, resized if needed).
    ``crop`` < 1 first keeps the centred square of that fraction of the shorter side: the
    cell, without most of the smear around it."""
    rgb = to_rgb(ImageOps.exif_transpose(img))
    if crop < 1.0:
        rgb = rgb.crop(centre_box(*rgb.size, crop))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), RESAMPLE.get(interpolation, Image.Resampling.BICUBIC))
    return np.array(rgb, dtype=np.uint8)  # a writable copy (torch refuses read-only)


@dataclass(frozen=True)
class Decoded:
    """One cell image, ready for the model, or the reason it could not be read.

    ``pixels`` is ``(size, size, 3)`` uint8: a numpy array, or a device tensor when the
    GPU decode path (:mod:`cellbag.featurize.gpu_decode`) made it.
    """

    pixels: np.ndarray | Any | None
    reason: str
    sha256: str
    size: int = -1  # bytes of the file read (-1: not read)
    mtime_ns: int = -1  # its modification time


@dataclass(frozen=True)
class ImageBytes:
    """The encoded bytes of one image file, with their digest and file stats."""

    data: bytes
    sha256: str
    size: int
    mtime_ns: int


def read_image_file(path: str | Path) -> ImageBytes | Decoded:
    """The file's bytes and digest, or a :class:`Decoded` saying why it cannot be read."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except OSError as e:
        return Decoded(None, image_error_text(e, path), "")
    return ImageBytes(data, hashlib.sha256(data).hexdigest()[:16], st.st_size, st.st_mtime_ns)


def decode_bytes(
    raw: ImageBytes, size: int, interpolation: str = "bicubic", crop: float = 1.0
) -> Decoded:
    """Prepare an image from its bytes with PIL; never raises for a bad image."""
    stat = {"size": raw.size, "mtime_ns": raw.mtime_ns}
    try:
        with Image.open(io.BytesIO(raw.data)) as img:
            img.load()
            pixels = prepare(img, size, interpolation, crop)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBomb...)
        return Decoded(None, f"unreadable image: {image_error_text(e)}", raw.sha256, **stat)
    return Decoded(pixels, "", raw.sha256, **stat)


def decode_file(
    path: str | Path, size: int, interpolation: str = "bicubic", crop: float = 1.0
) -> Decoded:
    """Read, hash and prepare one image file; never raises for a bad file."""
    raw = read_image_file(path)
    return raw if isinstance(raw, Decoded) else decode_bytes(raw, size, interpolation, crop)
