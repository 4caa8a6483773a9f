"""Pixel-level levers of issue 30 §3 that `featurize` does not offer, as probe encoders.

    python benchmarks/lymphocytosis_pixels.py STORE OUT_STORE
        {dihedral|patient-reinhard|macenko|mask}
        [--encoder ID] [--split train]

``STORE`` is a store featurized with lite0 (``--crop 0.57``, optionally ``--stain
reinhard``); ``OUT_STORE`` a copy of it (made on the first call) that gains one or more
probe encoders, each with the embeddings of ``--split``'s cells (the other cells keep the
base encoder's rows, which cv of the training split never reads):

- ``dihedral``: each cell's embedding averaged over its rotations by 0, 90, 180 and 270
  degrees (``dihedral4``) and over 0 and 180 (``dihedral2``); the base encoder's own
  preprocessing (crop, stain) first. 4 forward passes per cell. Its unrotated pass is
  checked to equal the base encoder's rows, so the probe reproduces `featurize`.
- ``patient-reinhard``: Reinhard's colour transfer with each **patient's** L*a*b* mean and
  std (pooled over the centre crops of all its cells: the smear's cast) instead of each
  image's, to the same fixed reference as ``--stain reinhard``; then lite0 as featurize
  does. Per-image normalisation also equalises the colour differences between cells of one
  smear; per-patient normalisation keeps them. Label-free and per patient, so a new patient
  is normalised the same way.

- ``macenko``: Macenko's stain normalisation of each image (after the crop): optical
  densities, the two stain vectors from the extreme angles of their projection on the
  plane of the two main directions, each stain's concentration scaled so its 99th
  percentile matches the reference, then recomposed with the reference stain vectors. The
  reference (:data:`MACENKO_STAINS`, :data:`MACENKO_MAX`) is, like Reinhard's, taken once
  from the synthetic smears of ``cellbag demo-data`` (centre 0.57, 200 crops), never from a
  cohort.

- ``mask``: cell masking. After the base encoder's own preprocessing (crop, stain,
  resize), the lymphocyte is segmented by colour as ``--encoder morphometry`` finds it
  (blue-violet, ``B > R``, the component nearest the centre, holes filled), its mask
  dilated by :data:`MASK_MARGIN` pixels to keep the membrane, and every pixel outside it
  set to ImageNet's mean colour (zero after the encoder's normalisation): the encoder sees
  the cell alone, its size and shape kept (no resize to the mask). A crop where no cell is
  found is left whole. The share of crops with a cell found is printed.

Then ``cellbag cv OUT_STORE -e dihedral4 ...`` pairs with the base encoder's runs (same
patients, same splits). Never commit the output: it is derived from patient images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np
from PIL import Image

#: Macenko's reference: stain vectors (rows, unit optical-density directions) and the 99th
#: percentile of each stain's concentration, from the demo's synthetic smears
#: (:func:`macenko_stains` over the centres of 200 seeded crops of the five cell types)
MACENKO_STAINS = ((0.0786, 0.7963, 0.5997), (0.7046, 0.7065, 0.0657))
MACENKO_MAX = (1.2464, 1.8507)
#: pixels by which the cell mask is dilated (at the encoder's input size) before masking
MASK_MARGIN = 4
#: the fill outside the cell: ImageNet's mean colour, zero after the encoder's normalisation
MASK_FILL = (124, 116, 104)
#: optical density below which a pixel is background (Macenko et al. 2009: 0.15)
OD_MIN = 0.15


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) optical densities of (n, 3) uint8 pixels."""
    return -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def macenko_stains(pixels: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(stains (2, 3), max concentrations (2,)) of (n, 3) uint8 pixels: Macenko's two stain
    vectors (the ``alpha`` and ``100 - alpha`` percentile angles of the stained pixels in
    the plane of their two main optical-density directions; first the one that absorbs
    more blue than red, the eosin-like pink) and the 99th percentile of each stain's
    concentration."""
    od = optical_density(pixels)
    od = od[(od > OD_MIN).all(axis=1)]
    if len(od) < 10:  # nothing stained: the reference itself
        return np.asarray(MACENKO_STAINS), np.asarray(MACENKO_MAX)
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest directions
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    a = plane @ np.array([np.cos(lo), np.sin(lo)])
    b = plane @ np.array([np.cos(hi), np.sin(hi)])
    a, b = (a if a[0] >= 0 else -a), (b if b[0] >= 0 else -b)
    stains = np.stack([a, b]) if a[2] - a[0] >= b[2] - b[0] else np.stack([b, a])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
    return stains, np.percentile(conc, 99, axis=1)


def macenko(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image (h, w, 3) with its stains mapped onto the reference's."""
    flat = rgb.reshape(-1, 3)
    stains, cmax = macenko_stains(flat)
    conc = np.linalg.lstsq(stains.T, optical_density(flat).T, rcond=None)[0]
    conc *= (np.asarray(MACENKO_MAX) / np.maximum(cmax, 1e-6))[:, None]
    out = 256.0 * np.exp(-(np.asarray(MACENKO_STAINS).T @ conc)) - 1.0
    return np.clip(out.T + 0.5, 0, 255).astype(np.uint8).reshape(rgb.shape)


def macenko_embeddings(enc, paths: list[str], batch: int = 64) -> np.ndarray:
    """(n, d): embeddings of each cell's centre crop after Macenko's normalisation."""
    from cellbag.featurize.images import centre_box

    out = np.zeros((len(paths), enc.dim), np.float32)
    t = time.time()
    size = (enc.image_size, enc.image_size)
    for i in range(0, len(paths), batch):
        pixels = []
        for p in paths[i : i + batch]:
            im = Image.open(p).convert("RGB")
            rgb = macenko(np.asarray(im.crop(centre_box(*im.size, enc.crop))))
            pixels.append(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC)))
        out[i : i + batch] = enc.forward_pixels(np.stack(pixels)).numpy()
        if i % (20 * batch) == 0:
            n = min(i + batch, len(paths))
            print(f"  {n} cells, {n / (time.time() - t):.1f} cells/s", flush=True)
    return out


def base_rows(store, encoder: str, split: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Row indices, paths and patient ids of ``split``'s cells (all its cells, in order)."""
    cells = store.cells(encoder)
    pats = store.patients()
    keep = set(pats.loc[pats["split"].astype(str) == split, "patient_id"].astype(str))
    rows = np.flatnonzero(cells["patient_id"].astype(str).isin(keep).to_numpy())
    return (
        rows,
        cells["path"].astype(str).to_numpy()[rows].tolist(),
        cells["patient_id"].astype(str).to_numpy()[rows].tolist(),
    )


def dihedral(enc, paths: list[str], batch: int = 64) -> np.ndarray:
    """(4, n, d): embeddings of each cell rotated by 0, 90, 180, 270 degrees."""
    out = np.zeros((4, len(paths), enc.dim), np.float32)
    t = time.time()
    for i in range(0, len(paths), batch):
        with_pixels = np.stack([enc.prepare(Image.open(p)) for p in paths[i : i + batch]])
        for k in range(4):
            rot = np.ascontiguousarray(np.rot90(with_pixels, k, axes=(1, 2)))
            out[k, i : i + batch] = enc.forward_pixels(rot).numpy()
        if i % (20 * batch) == 0:
            n = min(i + batch, len(paths))
            print(f"  {n} cells, {n / (time.time() - t):.1f} cells/s", flush=True)
    return out


def patient_reinhard(enc, paths: list[str], patients: list[str], batch: int = 64) -> np.ndarray:
    """(n, d): embeddings after Reinhard's transfer with each patient's pooled statistics."""
    from skimage.color import lab2rgb, rgb2lab

    from cellbag.featurize.images import REINHARD_MEAN, REINHARD_STD, centre_box

    ref_mu, ref_sd = np.asarray(REINHARD_MEAN), np.asarray(REINHARD_STD)
    out = np.zeros((len(paths), enc.dim), np.float32)
    order: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        order.setdefault(p, []).append(i)
    t, done = time.time(), 0
    for pid, idx in order.items():
        labs = []
        for i in idx:
            im = Image.open(paths[i]).convert("RGB")
            labs.append(rgb2lab(np.asarray(im.crop(centre_box(*im.size, enc.crop)))))
        pooled = np.concatenate([lab.reshape(-1, 3) for lab in labs])
        mu, sd = pooled.mean(0), np.where(pooled.std(0) < 1e-6, 1.0, pooled.std(0))
        pixels = []
        for lab in labs:
            x = (lab.reshape(-1, 3) - mu) / sd * ref_sd + ref_mu
            x[:, 0] = np.clip(x[:, 0], 0.0, 100.0)
            x[:, 2] = np.minimum(x[:, 2], 200.0 * (x[:, 0] + 16.0) / 116.0)
            rgb = np.clip(lab2rgb(x.reshape(lab.shape)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            size = (enc.image_size, enc.image_size)
            pixels.append(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC)))
        for s in range(0, len(idx), batch):
            out[idx[s : s + batch]] = enc.forward_pixels(np.stack(pixels[s : s + batch])).numpy()
        done += len(idx)
        print(f"  {pid}: {done} cells, {done / (time.time() - t):.1f} cells/s", flush=True)
    return out


def cell_mask(pixels: np.ndarray, margin: int = MASK_MARGIN) -> np.ndarray | None:
    """Boolean (h, w) mask of the lymphocyte of uint8 RGB ``pixels``, dilated by
    ``margin`` pixels (morphometry's segmentation); None when no cell is found."""
    from scipy import ndimage as ndi

    from cellbag.featurize.morphometry import cell_region

    cell = cell_region(pixels)
    if cell.sum() < 20:
        return None
    return ndi.binary_dilation(cell, iterations=margin) if margin else cell


def masked_embeddings(enc, paths: list[str], batch: int = 64) -> tuple[np.ndarray, float]:
    """(n, d) embeddings of each cell alone (outside its mask: :data:`MASK_FILL`) and the
    share of crops whose cell was found."""
    out = np.zeros((len(paths), enc.dim), np.float32)
    found, t = 0, time.time()
    fill = np.asarray(MASK_FILL, np.uint8)
    for i in range(0, len(paths), batch):
        pix = np.stack([enc.prepare(Image.open(p)) for p in paths[i : i + batch]])
        for j in range(len(pix)):
            m = cell_mask(pix[j])
            if m is not None:
                pix[j][~m] = fill
                found += 1
        out[i : i + batch] = enc.forward_pixels(pix).numpy()
        if i % (20 * batch) == 0:
            n = min(i + batch, len(paths))
            print(f"  {n} cells, {n / (time.time() - t):.1f} cells/s", flush=True)
    return out, found / max(len(paths), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("out_store")
    ap.add_argument("lever", choices=["dihedral", "patient-reinhard", "macenko", "mask"])
    ap.add_argument("--encoder", default=None, help="the base encoder id (the store's only one)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from cellbag.aggregate.bags import resolve_encoder
    from cellbag.core.allocator import tune_allocator
    from cellbag.featurize.registry import create_encoder
    from cellbag.store.feature_store import Store

    tune_allocator()
    torch.set_num_threads(args.threads)
    if not os.path.exists(args.out_store):
        shutil.copytree(args.store, args.out_store)
    store = Store.open(args.out_store, mode="r+")
    base_id = resolve_encoder(store, args.encoder)
    info = store.encoder_info(base_id)
    crop, stain = float(info.get("crop", 1.0)), str(info.get("stain", "none"))
    rows, paths, patients = base_rows(store, base_id, args.split)
    base = store.read_rows(base_id, 0, store.n_cells).astype(np.float32)
    print(f"{base_id}: crop {crop}, stain {stain}; {len(rows)} {args.split} cells", flush=True)
    t = time.time()
    if args.lever == "dihedral":
        enc = create_encoder(info.get("name", "tf_efficientnet_lite0"), crop=crop, stain=stain)
        if enc.id != base_id:
            raise SystemExit(f"this code makes {enc.id}, the store holds {base_id}")
        views = dihedral(enc, paths)
        gap = float(np.abs(views[0].astype(np.float16) - base[rows]).max())
        print(f"unrotated pass vs the store: max |difference| {gap:.2e}")
        probes = {"dihedral4": views.mean(0), "dihedral2": views[[0, 2]].mean(0)}
    elif args.lever == "patient-reinhard":
        enc = create_encoder(info.get("name", "tf_efficientnet_lite0"), crop=crop)
        probes = {"patient-reinhard": patient_reinhard(enc, paths, patients)}
    elif args.lever == "macenko":
        enc = create_encoder(info.get("name", "tf_efficientnet_lite0"), crop=crop)
        probes = {"macenko": macenko_embeddings(enc, paths)}
    else:
        enc = create_encoder(info.get("name", "tf_efficientnet_lite0"), crop=crop, stain=stain)
        emb, share = masked_embeddings(enc, paths)
        print(f"mask: a cell found in {share:.1%} of the crops")
        probes = {"mask": emb}
    print(f"{args.lever}: {time.time() - t:.0f} s, {len(rows) / (time.time() - t):.1f} cells/s")
    for name, emb in probes.items():
        data = base.copy()
        data[rows] = emb
        store.add_embeddings(name, data.astype(np.float16), {"name": name, "probe": args.lever})
        print(f"added encoder {name}: cellbag cv {args.out_store} -e {name} ...")


if __name__ == "__main__":
    main()
