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


#: ``--stain`` values: ``none`` (the pixels as read) or ``reinhard`` (:func:`reinhard`).
STAINS = ("none", "reinhard")

#: Reinhard's target, CIE L*a*b* (skimage's D65 ``rgb2lab``) per-channel mean and std of a
#: typical May-Grünwald-Giemsa smear crop's centre (a violet lymphocyte on pale pink red
#: cells): fixed literals, written once from the synthetic smears of
#: :func:`cellbag.data.demo.render_cell` without a stain cast (centre 0.57, mean over 200
#: seeded crops of the five cell types), never fitted on a cohort. Changing them changes
#: every ``reinhard`` encoder id (they are part of the identity).
REINHARD_MEAN = (72.45, 18.27, -7.34)
REINHARD_STD = (16.44, 9.53, 14.19)


#: bump when :func:`reinhard`'s pixels change (part of every ``reinhard`` encoder's id).
#: 2: float32 colour conversions with a lookup table (1.6x faster than scikit-image's
#: float64 ones; one value in ~60,000 differs by one level)
REINHARD_VERSION = 2

# sRGB (D65) <-> CIE XYZ <-> L*a*b*, as scikit-image's rgb2lab / lab2rgb define them
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.35758, 0.180423], [0.212671, 0.71516, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
#: linear RGB (rows) @ _TO_XYZ = XYZ / white
_TO_XYZ = (_XYZ_FROM_RGB.T / _WHITE_D65).astype(np.float32)
#: (XYZ / white) (rows) @ _TO_RGB = linear RGB
_TO_RGB = (np.linalg.inv(_XYZ_FROM_RGB).T * _WHITE_D65[:, None]).astype(np.float32)
#: the linear value of each uint8 sRGB level
_LINEAR = np.where(
    np.arange(256) / 255.0 > 0.04045,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
    np.arange(256) / 255.0 / 12.92,
).astype(np.float32)


def reinhard(rgb: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer of an RGB uint8 ``(h, w, 3)`` image: each L*a*b* channel
    shifted and scaled to :data:`REINHARD_MEAN` / :data:`REINHARD_STD` (a constant channel
    takes the reference mean); back to RGB uint8, out-of-gamut colours clipped. The
    conversions are scikit-image's (D65), in float32 (statistics in float64)."""
    h, w = rgb.shape[:2]
    t = _LINEAR[np.asarray(rgb, np.uint8).reshape(-1, 3)] @ _TO_XYZ
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    lab = np.empty_like(f)
    lab[:, 0] = 116.0 * f[:, 1] - 16.0
    lab[:, 1] = 500.0 * (f[:, 0] - f[:, 1])
    lab[:, 2] = 200.0 * (f[:, 1] - f[:, 2])
    mu, sd = lab.mean(0, dtype=np.float64), lab.std(0, dtype=np.float64)
    sd = np.where(sd < 1e-6, 1.0, sd)
    ref_mu, ref_sd = np.asarray(REINHARD_MEAN), np.asarray(REINHARD_STD)
    lab = lab * (ref_sd / sd).astype(np.float32) + (ref_mu - mu * ref_sd / sd).astype(np.float32)
    fy = (np.clip(lab[:, 0], 0.0, 100.0) + 16.0) / 116.0
    f[:, 0] = lab[:, 1] / 500.0 + fy
    f[:, 1] = fy
    f[:, 2] = np.maximum(fy - lab[:, 2] / 200.0, 0.0)  # Z >= 0
    t = np.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)
    lin = np.clip(t @ _TO_RGB, 0.0, 1.0)
    s = np.where(lin > 0.0031308, 1.055 * np.power(lin, np.float32(1 / 2.4)) - 0.055, 12.92 * lin)
    return (np.clip(s, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(h, w, 3)


def centre_box(width: int, height: int, crop: float) -> tuple[int, int, int, int]:
    """The centred square of side ``crop`` x the shorter side, as a PIL box."""
    side = max(1, int(round(min(width, height) * crop)))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def prepare(
    img: Image.Image,
    size: int,
    interpolation: str = "bicubic",
    crop: float = 1.0,
    stain: str = "none",
) -> np.ndarray:
    """RGB ``(size, size, 3)`` uint8 array of ``img`` (upright, converted, resized if needed).
    ``crop`` < 1 first keeps the centred square of that fraction of the shorter side: the
    cell, without most of the smear around it. ``stain="reinhard"`` then matches the
    colours to a fixed reference (:func:`reinhard`), before the resize."""
    rgb = to_rgb(ImageOps.exif_transpose(img))
    if crop < 1.0:
        rgb = rgb.crop(centre_box(*rgb.size, crop))
    if stain == "reinhard":
        rgb = Image.fromarray(reinhard(np.asarray(rgb, dtype=np.uint8)))
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
    raw: ImageBytes,
    size: int,
    interpolation: str = "bicubic",
    crop: float = 1.0,
    stain: str = "none",
) -> Decoded:
    """Prepare an image from its bytes with PIL; never raises for a bad image."""
    stat = {"size": raw.size, "mtime_ns": raw.mtime_ns}
    try:
        with Image.open(io.BytesIO(raw.data)) as img:
            img.load()
            pixels = prepare(img, size, interpolation, crop, stain)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBomb...)
        return Decoded(None, f"unreadable image: {image_error_text(e)}", raw.sha256, **stat)
    return Decoded(pixels, "", raw.sha256, **stat)


def decode_file(
    path: str | Path,
    size: int,
    interpolation: str = "bicubic",
    crop: float = 1.0,
    stain: str = "none",
) -> Decoded:
    """Read, hash and prepare one image file; never raises for a bad file."""
    raw = read_image_file(path)
    return raw if isinstance(raw, Decoded) else decode_bytes(raw, size, interpolation, crop, stain)
