"""``--crop auto`` and ``--stain auto``: is this a cohort of blood-smear crops, each centred
on a lymphocyte small enough for the centre crop?

On the real lymphocytosis cohort and the demo's synthetic smears, keeping the central 57%
of each crop (the cell without most red cells) and matching its colours to a fixed
reference (Reinhard) is the preprocessing that measured best (docs/real-cohort.md,
docs/benchmarks.md). It would cut the cell of a tight single-cell crop and recolour images
that are not May-Grünwald-Giemsa smears (a digit scan, a fluorescence tile), so it is taken
only where the cohort's own images say it fits: a label-free look at a fixed, evenly spread
sample of them (:data:`SAMPLE` images, the same whatever the machine), before any embedding.

In each sampled image the lymphocyte is looked for as ``--encoder morphometry`` finds it: the
blue-violet object (blue above red, after a 3-pixel smoothing and an opening), the component
nearest the centre, which must reach within :data:`CENTRE_REACH` of the side from it. The
cohort counts as smear crops when such a cell is found in at least :data:`MIN_FOUND` of the
sampled images and, of those, at least half (:data:`MIN_FIT`) fit inside the centred square
of :data:`SMEAR_CROP` of the side (on the real cohort 90% do, on the demo cohorts 73-99%,
on tight single-cell crops almost none: a stain cast can merge a cell with the background,
which is why half, not all). Then ``auto`` resolves to ``--crop 0.57 --stain reinhard``;
otherwise to the whole image, colours as read. What was decided, and why, is printed and
the resolved values are what the encoder's id and ``featurize.yaml`` record, so a replay
or a ``predict`` of new patients preprocesses exactly as the training cohort was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: the centre crop of smear cohorts: the central 128 of 224 px
SMEAR_CROP = 0.57
#: the colour normalisation of smear cohorts (:func:`cellbag.featurize.images.reinhard`)
SMEAR_STAIN = "reinhard"
#: images looked at, evenly spread over the cohort's cells (all of them when fewer)
SAMPLE = 48
#: the side of the square the images are looked at (downscaled; the decision is scale-free)
LOOK_SIZE = 112
#: the cell must reach within this fraction of the side from the image's centre
CENTRE_REACH = 0.15
#: a cell this small (fraction of the image area) is noise, not a lymphocyte
MIN_AREA = 0.01
#: share of the sampled images that must show a centred blue-violet cell
MIN_FOUND = 0.8
#: share of those cells that must fit inside the centred SMEAR_CROP square
MIN_FIT = 0.5
#: the values ``auto`` stands for (``--crop auto``, ``--stain auto``)
AUTO = "auto"


@dataclass(frozen=True)
class SmearCheck:
    """What the look at a cohort's images found."""

    sampled: int  # images looked at (readable ones)
    found: int  # with a centred blue-violet cell
    fit: int  # of those, inside the centred SMEAR_CROP square

    @property
    def is_smear(self) -> bool:
        """Smear crops centred on a cell that the centre crop keeps whole."""
        return (
            self.sampled > 0
            and self.found >= MIN_FOUND * self.sampled
            and self.fit >= MIN_FIT * self.found
        )

    def text(self) -> str:
        """One line for the user: what was seen and what it decides."""
        seen = (
            f"a centred blue-violet cell in {self.found} of {self.sampled} sampled images, "
            f"{self.fit} of them inside the central {SMEAR_CROP:g}"
        )
        if self.is_smear:
            return f"smear crops ({seen}): crop {SMEAR_CROP:g}, stain {SMEAR_STAIN}"
        return f"not smear crops centred on a small cell ({seen}): whole image, colours as read"


def centred_cell(rgb: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the blue-violet object nearest the centre of an RGB uint8 image, or
    None when there is none within :data:`CENTRE_REACH` of the side from the centre."""
    from cellbag.featurize.morphometry import cell_region

    h, w = np.shape(rgb)[:2]
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    cell = cell_region(rgb)
    if cell.sum() < MIN_AREA * h * w:
        return None
    yy, xx = np.nonzero(cell)
    reach = np.sqrt(((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2).min())
    return cell if reach <= CENTRE_REACH * min(h, w) else None


def cell_extent(mask: np.ndarray) -> float:
    """The side of the smallest centred square holding ``mask``, as a fraction of the
    image's shorter side (what ``--crop`` would have to keep)."""
    h, w = mask.shape
    yy, xx = np.nonzero(mask)
    half = max(
        np.abs(yy + 0.5 - h / 2.0).max(initial=0.0),
        np.abs(xx + 0.5 - w / 2.0).max(initial=0.0),
    )
    return float(2.0 * half / min(h, w))


def sample_paths(paths: Sequence[str | os.PathLike], n: int = SAMPLE) -> list[str]:
    """``n`` paths evenly spread over ``paths`` (in their order; all when fewer)."""
    paths = [os.fspath(p) for p in paths]
    if len(paths) <= n:
        return paths
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def look(path: str) -> np.ndarray | None:
    """The image as RGB uint8, upright, its shorter side :data:`LOOK_SIZE` (None when
    unreadable: the featurize run reports those itself)."""
    from PIL import Image, ImageOps

    from cellbag.featurize.images import to_rgb

    try:
        with Image.open(path) as im:
            rgb = to_rgb(ImageOps.exif_transpose(im))
            scale = LOOK_SIZE / min(rgb.size)
            if scale < 1:
                size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
                rgb = rgb.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, ValueError, SyntaxError):
        return None


def check_smear(paths: Sequence[str | os.PathLike]) -> SmearCheck:
    """Look at an even sample of ``paths`` (:func:`sample_paths`)."""
    sampled = found = fit = 0
    for p in sample_paths(paths):
        rgb = look(p)
        if rgb is None:
            continue
        sampled += 1
        cell = centred_cell(rgb)
        if cell is None:
            continue
        found += 1
        fit += cell_extent(cell) <= SMEAR_CROP
    return SmearCheck(sampled, found, fit)


def needs_look(crop: float | str | None, stain: str | None) -> bool:
    """Whether either setting is ``auto``."""
    return AUTO in (crop, stain)


def resolve(
    crop: float | str | None, stain: str | None, paths: Sequence[str | os.PathLike]
) -> tuple[float | None, str | None, SmearCheck | None]:
    """``(crop, stain, check)``: each ``auto`` replaced by what :func:`check_smear` of
    ``paths`` decides (None of the check when neither is ``auto``); other values as given."""
    if isinstance(crop, str) and crop != AUTO:
        crop = float(crop)
    if not needs_look(crop, stain):
        return crop, stain, None
    check = check_smear(paths)
    if crop == AUTO:
        crop = SMEAR_CROP if check.is_smear else 1.0
    if stain == AUTO:
        stain = SMEAR_STAIN if check.is_smear else "none"
    return crop, stain, check
