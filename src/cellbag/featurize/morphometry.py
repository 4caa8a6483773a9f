"""Morphometry: what a hematologist reads on a lymphocyte, as named numbers per cell.

The cell is found by colour: on May-Grünwald-Giemsa smears the lymphocyte (nucleus and
cytoplasm) is the blue-violet object, bluer than red (``B > R``), while red cells and the
background are red-dominant. Inside it, the nucleus is its dark part (green channel below
an Otsu cut taken within the cell). The object nearest the centre of the crop is kept
(crops are centred on their lymphocyte). From the two masks come sizes, shapes, the
nucleus / cytoplasm ratio, chromatin texture and the colours of both compartments.

Every feature is a plain float with a name (:data:`FEATURE_NAMES`), computed from the
uint8 pixels alone (no weights, no randomness), so a store records it like any encoder,
and the report can name what drove a decision. A crop where no cell is found gives the
features of an empty mask (areas 0) and ``found = 0``, never an error.
"""

from __future__ import annotations

import numpy as np

#: names of the per-cell features, in column order
FEATURE_NAMES: tuple[str, ...] = (
    "found",
    "cell_area",
    "cell_perimeter",
    "cell_circularity",
    "cell_eccentricity",
    "cell_solidity",
    "cell_major_axis",
    "cell_minor_axis",
    "nucleus_area",
    "nucleus_perimeter",
    "nucleus_circularity",
    "nucleus_eccentricity",
    "nucleus_solidity",
    "nucleus_major_axis",
    "nucleus_minor_axis",
    "nucleus_parts",
    "nc_ratio",
    "nucleus_offset",
    "nucleus_r",
    "nucleus_g",
    "nucleus_b",
    "chromatin_sd",
    "chromatin_contrast",
    "chromatin_homogeneity",
    "chromatin_entropy",
    "cytoplasm_r",
    "cytoplasm_g",
    "cytoplasm_b",
    "cytoplasm_sd",
    "cytoplasm_blueness",
    "cytoplasm_dark_spots",
    "cytoplasm_rim_width",
)
#: bump when a feature's definition changes (part of the encoder's identity)
MORPHOMETRY_VERSION = 1


def _shape(mask: np.ndarray) -> tuple[float, ...]:
    """(area, perimeter, circularity, eccentricity, solidity, major, minor) of a mask."""
    from skimage.measure import regionprops

    if not mask.any():
        return (0.0,) * 7
    p = regionprops(mask.astype(np.uint8))[0]
    area, per = float(p.area), float(p.perimeter) or 1.0
    circ = min(1.0, 4.0 * np.pi * area / (per * per))
    return (
        area,
        per,
        circ,
        float(p.eccentricity),
        float(p.solidity),
        float(p.axis_major_length),
        float(p.axis_minor_length),
    )


def _nearest_component(mask: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """The connected component of ``mask`` nearest ``centre`` (by its closest pixel),
    among components of at least 1/20 of the largest one's area."""
    from skimage.measure import label

    lab = label(mask, connectivity=2)
    if lab.max() == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= max(20, sizes.max() / 20))
    yy, xx = np.nonzero(lab)
    d = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    best, best_d = 0, np.inf
    lab_at = lab[yy, xx]
    for k in keep:
        dk = d[lab_at == k].min()
        if dk < best_d:
            best, best_d = k, dk
    return lab == best


def cell_region(pixels: np.ndarray) -> np.ndarray:
    """Boolean (h, w) mask of the lymphocyte of an RGB image: the blue-violet object (blue
    above red after a 3-pixel smoothing, opened once) nearest the centre, holes filled;
    all False when there is none. What morphometry measures, ``--crop auto`` looks for and
    the masking probe keeps."""
    from scipy import ndimage as ndi

    a = np.asarray(pixels, dtype=np.float32)
    h, w = a.shape[:2]
    r, b = ndi.uniform_filter(a[..., 0], 3), ndi.uniform_filter(a[..., 2], 3)
    blue = ndi.binary_opening((b - r) > 0, iterations=1)
    return ndi.binary_fill_holes(_nearest_component(blue, ((h - 1) / 2.0, (w - 1) / 2.0)))


def cell_features(pixels: np.ndarray) -> np.ndarray:
    """Features (len(FEATURE_NAMES),) float32 of one RGB uint8 crop ``(h, w, 3)``."""
    from scipy import ndimage as ndi
    from skimage.feature import graycomatrix, graycoprops
    from skimage.filters import threshold_otsu

    a = np.asarray(pixels, dtype=np.float32)
    h, w = a.shape[:2]
    scale = 224.0 / max(h, w)  # sizes in pixels of a 224-px crop, whatever the input
    g = ndi.uniform_filter(a[..., 1], 3)
    cell = cell_region(a)
    out = np.zeros(len(FEATURE_NAMES), np.float32)
    if cell.sum() < 20:
        return out
    gin = g[cell]
    cut = threshold_otsu(gin) if np.ptp(gin) > 1 else float(gin.max()) + 1
    nucleus_all = cell & (g < cut)
    nucleus_all = ndi.binary_opening(nucleus_all, iterations=1)
    parts = int(ndi.label(nucleus_all)[1])
    nucleus = ndi.binary_fill_holes(nucleus_all)
    if nucleus.sum() < 10:
        nucleus = nucleus_all
    cyto = cell & ~nucleus
    cs = _shape(cell)
    ns = _shape(nucleus) if nucleus.any() else (0.0,) * 7
    lin, area = scale, scale * scale
    n_area = float(nucleus.sum())
    offset = 0.0
    if nucleus.any():
        cy, cx = ndi.center_of_mass(cell)
        ny, nx = ndi.center_of_mass(nucleus)
        offset = float(np.hypot(cy - ny, cx - nx) / np.sqrt(cs[0]))
    nuc_px = a[nucleus] if nucleus.any() else np.zeros((1, 3), np.float32)
    cyt_px = a[cyto] if cyto.any() else np.zeros((1, 3), np.float32)
    chrom_sd = float(nuc_px[:, 1].std())
    contrast = homog = entropy = 0.0
    if nucleus.sum() >= 16:
        ys, xs = np.nonzero(nucleus)
        box = a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1, 1]
        m = nucleus[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        q = (np.clip(box, 0, 255) // 16).astype(np.uint8) + 1
        q[~m] = 0  # level 0: outside the nucleus, dropped from the co-occurrences
        glcm = graycomatrix(q, [1, 2], [0, np.pi / 2], levels=17, symmetric=True)
        glcm = glcm[1:, 1:].astype(np.float64)
        tot = glcm.sum(axis=(0, 1), keepdims=True)
        if tot.min() > 0:
            glcm = glcm / tot
            contrast = float(graycoprops(glcm, "contrast").mean())
            homog = float(graycoprops(glcm, "homogeneity").mean())
            pk = glcm.mean(axis=(2, 3)).ravel()
            pk = pk[pk > 0]
            entropy = float(-(pk * np.log(pk)).sum())
    dark_spots = 0.0
    if cyto.sum() >= 10:
        cg = a[..., 1]
        spots = cyto & (cg < np.percentile(cg[cyto], 5) - 10)
        dark_spots = float(ndi.label(spots)[1])
    rim = 0.0
    if nucleus.any() and cyto.any():
        rim = float(ndi.distance_transform_edt(~nucleus)[cyto].mean()) * lin
    out[:] = (
        1.0,
        cs[0] * area,
        cs[1] * lin,
        cs[2],
        cs[3],
        cs[4],
        cs[5] * lin,
        cs[6] * lin,
        ns[0] * area,
        ns[1] * lin,
        ns[2],
        ns[3],
        ns[4],
        ns[5] * lin,
        ns[6] * lin,
        float(parts),
        n_area / max(float(cell.sum()), 1.0),
        offset,
        *nuc_px.mean(axis=0),
        chrom_sd,
        contrast,
        homog,
        entropy,
        *cyt_px.mean(axis=0),
        float(cyt_px[:, 1].std()),
        float((cyt_px[:, 2] - cyt_px[:, 0]).mean()),
        dark_spots,
        rim,
    )
    return out


def batch_features(pixels: np.ndarray) -> np.ndarray:
    """Features ``(n, len(FEATURE_NAMES))`` float32 of a uint8 batch ``(n, h, w, 3)``."""
    return np.stack([cell_features(p) for p in np.asarray(pixels)]).astype(np.float32)
