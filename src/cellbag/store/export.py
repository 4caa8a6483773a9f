"""Export an encoder's bags as per-patient HDF5 files in the layouts other MIL tools read.

``layout``:

- ``cellbag``: ``OUT/<patient>.h5``: ``features`` (n, dim) float32, ``coords``, ``cell_ids``;
  attributes: the encoder's metadata, the patient, split and label.
- ``clam``: ``OUT/h5_files/<patient>.h5`` (``features``, ``coords``), ``OUT/pt_files/<patient>.pt``
  (the features as a torch tensor) and ``OUT/dataset.csv`` (``case_id,slide_id,label``, labelled
  patients, label 0 reactive / 1 tumoral: ``label_dict={0: 0, 1: 1}``), as CLAM's
  ``Generic_MIL_Dataset(csv_path=OUT/dataset.csv, data_dir=OUT)`` reads them (one "slide" per
  patient: ``slide_id`` is the patient id).
- ``trident``: ``OUT/<patient>.h5``, ``features`` and ``coords`` with their attributes on the
  datasets, as TRIDENT's patch-feature files carry them (``name``, ``encoder``; ``patch_size``
  from the encoder's image size; ``savetodir`` only with ``with_paths``).
- ``stamp``: ``OUT/<patient>.h5`` with ``feats`` and ``coords`` (file attributes ``extractor``,
  ``unit``, ``feat_type``, ``tile_size_px``), plus STAMP's tables ``OUT/clini.csv``
  (``PATIENT``, ``label``, clinical columns) and ``OUT/slide.csv`` (``PATIENT,FILENAME``).

Coordinates: cells have no position on a slide, so ``coords`` is the cell's index in its
bag as ``(index, 0)`` (int64), unless the store knows positions (imported ``coords``); the
``coords`` dataset's ``meaning`` attribute says which. Every layout also gets
``OUT/labels.csv`` (``patient_id,label,split`` + clinical columns; ``store import --labels``
reads it) and a ``cell_ids`` dataset in each file, so ``cellbag store import`` reads any
layout back to identical bags. Attributes describe the file they sit in (its dtype, its
number of cells); machine-local paths (store, weights file, adapter) are written only with
``with_paths``. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.core.io import atomic_path, file_head_contains, refuse_foreign_folder, safe_child
from cellbag.store.errors import StoreError
from cellbag.store.feature_store import STATUS_OK, Store

LAYOUTS = ("cellbag", "clam", "trident", "stamp")
#: encoder metadata that describes the numbers, wherever they were made
PORTABLE_KEYS = (
    "encoder_id",
    "name",
    "model",
    "weights",
    "weights_sha256",
    "image_size",
    "mean",
    "std",
    "interpolation",
    "preprocessing",
    "precision",
    "adapter_sha256",
    # whose images / labels trained the encoder (a cellbag weights file's record)
    "image_patients",
    "label_patients",
    "identity",
    "versions",
    "source",
    "import_layout",
    "feature_digest",
)
#: metadata that names a file or folder of the exporting machine (only with ``with_paths``)
PATH_KEYS = ("weights_file", "adapter_path")
INDEX_MEANING = "(index of the cell in its bag, 0): cells have no known position"
KNOWN_MEANING = "positions read from the imported feature files"


def _h5_attr(value: Any) -> Any:
    """HDF5 attributes hold scalars, strings and flat numeric arrays; anything else is JSON."""
    if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return json.dumps(value, default=str)


def _looks_local(text: str) -> bool:
    """A weights source that is a file path ('none', 'hub', 'package:...' are not)."""
    return os.path.isabs(text) or text.startswith("~")


def encoder_attrs(store: Store, encoder_id: str, with_paths: bool = False) -> dict[str, Any]:
    """The encoder's metadata fit for a file leaving this machine (no None, no local paths)."""
    info = store.encoder_info(encoder_id)
    out = {k: info[k] for k in PORTABLE_KEYS if info.get(k) is not None}
    w = out.get("weights")
    if isinstance(w, str) and _looks_local(w):
        out["weights"] = w if with_paths else f"file {Path(w).name}"
    if with_paths:
        out.update({k: str(info[k]) for k in PATH_KEYS if info.get(k)})
        out["store"] = store.path
    out["dim"] = int(info["dim"])
    out["stored_dtype"] = str(info.get("dtype", "float16"))
    return {k: _h5_attr(v) for k, v in out.items()}


def _coords(store: Store, patient_index: int, keep: np.ndarray) -> tuple[np.ndarray, str]:
    n = int(keep.sum())
    root = store.zarr_group
    if "coords" in root["cells"]:
        a, b = int(store.offsets[patient_index]), int(store.offsets[patient_index + 1])
        return store._load("cells/coords", slice(a, b), rows_from=a)[keep], KNOWN_MEANING
    return np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.int64), INDEX_MEANING


def _atomic_h5(final: Path, write: Callable[[Any], None]) -> None:
    import h5py

    try:
        with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
            write(f)
    except OSError as e:
        raise StoreError(f"{final}: cannot write HDF5 ({e})") from None


def _atomic_csv(df: pd.DataFrame, final: Path) -> Path:
    with atomic_path(final) as tmp:
        df.to_csv(tmp, index=False)
    return final


def labels_table(store: Store) -> pd.DataFrame:
    """``patient_id,label,split,gender,dob,lymph_count`` + further clinical columns
    (empty where unknown): what ``store import --labels`` reads."""
    p = store.patients().drop(columns=["n_cells"])
    p["dob"] = [d.strftime("%Y-%m-%d") if pd.notna(d) else "" for d in p["dob"]]
    first = ["patient_id", "label", "split"]
    return p[first + [c for c in p.columns if c not in first]]


def is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier export (its ``labels.csv`` is cellbag's)."""
    return file_head_contains(folder / "labels.csv", "patient_id,label,split")


def export_h5(
    store: Store,
    encoder_id: str | None,
    out_dir: str | os.PathLike,
    layout: str = "cellbag",
    with_paths: bool = False,
    only_ok: bool = True,
    on_patient: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write one HDF5 file per patient in ``layout`` (see the module doc); return the files.

    ``encoder_id`` may be an id, a name matching one encoder, or None for the only one.
    ``out_dir`` must be new, empty or an earlier export: a folder holding anything else is
    refused (naming its first entry), so no file of the user's is overwritten."""
    if layout not in LAYOUTS:
        raise StoreError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    from cellbag.store.resolve import resolve_encoder

    encoder_id = resolve_encoder(store, encoder_id)
    store.require_complete(encoder_id)
    out = Path(out_dir)
    refuse_foreign_folder(out, ours=is_export_folder, what="cellbag export", error=StoreError)
    h5_dir = out / "h5_files" if layout == "clam" else out
    patients = store.patients()
    # every file name is checked before anything is written: an id never names a file outside OUT
    finals = [safe_child(h5_dir, p, ".h5", error=StoreError) for p in patients["patient_id"]]
    pts = [safe_child(out / "pt_files", p, ".pt", error=StoreError) for p in patients["patient_id"]]
    try:
        h5_dir.mkdir(parents=True, exist_ok=True)
        if layout == "clam":
            (out / "pt_files").mkdir(exist_ok=True)
    except OSError as e:
        raise StoreError(f"{out}: cannot create output folder ({e})") from None
    attrs = encoder_attrs(store, encoder_id, with_paths)
    bags = store.bags(encoder_id, only_ok=only_ok)
    cells = store.cells()
    written = []
    for i, (pid, label, split, feats) in enumerate(
        zip(patients["patient_id"], patients["label"], patients["split"], bags, strict=True)
    ):
        a, b = int(store.offsets[i]), int(store.offsets[i + 1])
        keep = store.status[a:b] == STATUS_OK if only_ok else np.ones(b - a, bool)
        cell_ids = cells["cell_id"].to_numpy(dtype=object)[a:b][keep]
        coords, meaning = _coords(store, i, keep)
        x = np.ascontiguousarray(feats, dtype=np.float32)

        own = {"dtype": "float32", "n_cells": len(x), "patient_id": pid, "split": split}
        own["label"] = -1 if pd.isna(label) else int(label)
        bag = _Bag(x, coords, meaning, cell_ids, {**attrs, **own})
        write = partial(
            _write_patient, bag=bag, layout=layout, with_paths=with_paths, folder=h5_dir
        )
        final = finals[i]
        _atomic_h5(final, write)
        if layout == "clam":
            _save_pt(pts[i], x)
        written.append(final)
        if on_patient is not None:
            on_patient(pid)
    _write_tables(store, out, layout)
    return written


@dataclass
class _Bag:
    x: np.ndarray
    coords: np.ndarray
    meaning: str
    cell_ids: np.ndarray
    attrs: dict[str, Any]


def _write_patient(f: Any, bag: _Bag, layout: str, with_paths: bool, folder: Path) -> None:
    """One patient's file in ``layout`` (an open, empty h5py File)."""
    import h5py

    a = bag.attrs
    feat = f.create_dataset("feats" if layout == "stamp" else "features", data=bag.x)
    crd = f.create_dataset("coords", data=bag.coords)
    crd.attrs["meaning"] = bag.meaning
    f.create_dataset("cell_ids", data=bag.cell_ids, dtype=h5py.string_dtype())
    if layout == "trident":
        feat.attrs["name"] = a["patient_id"]
        feat.attrs["encoder"] = a.get("name", a["encoder_id"])
        crd.attrs["name"] = a["patient_id"]
        if "image_size" in a:
            crd.attrs["patch_size"] = a["image_size"]
        if with_paths:
            feat.attrs["savetodir"] = str(folder.resolve())
    elif layout == "stamp":
        f.attrs["extractor"] = a["encoder_id"]
        f.attrs["unit"] = "index"  # not micrometres: cells have no position on a slide
        f.attrs["feat_type"] = "tile"
        if "image_size" in a:
            f.attrs["tile_size_px"] = a["image_size"]
    for k, v in a.items():
        f.attrs[k] = v


def _save_pt(final: Path, x: np.ndarray) -> None:
    """The features as a torch tensor (CLAM's pt_files); torch is imported only here."""
    import torch

    try:
        with atomic_path(final) as tmp:
            torch.save(torch.from_numpy(x.copy()), tmp)
    except OSError as e:
        raise StoreError(f"{final}: cannot write ({e})") from None


def _write_tables(store: Store, out: Path, layout: str) -> None:
    table = labels_table(store)
    _atomic_csv(table, out / "labels.csv")
    if layout == "clam":
        known = table[table["label"].notna()]
        ds = pd.DataFrame(
            {
                "case_id": known["patient_id"],
                "slide_id": known["patient_id"],
                "label": known["label"].astype(int),
            }
        )
        _atomic_csv(ds, out / "dataset.csv")
    elif layout == "stamp":
        clini = table.rename(columns={"patient_id": "PATIENT"})
        _atomic_csv(clini, out / "clini.csv")
        slide = pd.DataFrame(
            {"PATIENT": table["patient_id"], "FILENAME": [f"{p}.h5" for p in table["patient_id"]]}
        )
        _atomic_csv(slide, out / "slide.csv")
