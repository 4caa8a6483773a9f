"""Export an encoder's bags as one HDF5 file per patient (the CLAM / TRIDENT layout)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.store.errors import StoreError
from cellbag.store.feature_store import Store


def _h5_attr(value: Any) -> Any:
    """HDF5 attributes hold scalars, strings and flat arrays; anything else becomes JSON."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return json.dumps(value, default=str)


def export_h5(
    store: Store,
    encoder_id: str,
    out_dir: str | os.PathLike,
    only_ok: bool = True,
    on_patient: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``OUT_DIR/<patient_id>.h5`` with ``features`` (n, dim) float32 and ``cell_ids``.

    Each file carries the encoder metadata as attributes (nested values as JSON) and is
    written to a temporary name, then renamed, so a crash never leaves half a file.
    """
    import h5py

    store.require_complete(encoder_id)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{out}: cannot create output folder ({e})") from None
    info = store.encoder_info(encoder_id)
    attrs = {k: _h5_attr(v) for k, v in info.items()}
    attrs["store"] = store.path
    patients = store.patients()
    bags = store.bags(encoder_id, only_ok=only_ok)
    written = []
    for pid, label, split, feats in zip(
        patients["patient_id"], patients["label"], patients["split"], bags, strict=True
    ):
        cell_ids = store.bag_cells(pid, only_ok=only_ok)["cell_id"].to_numpy(dtype=object)
        final = out / f"{pid}.h5"
        tmp = out / f".{pid}.h5.tmp-{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=feats.astype(np.float32))
                f.create_dataset("cell_ids", data=cell_ids, dtype=h5py.string_dtype())
                for k, v in attrs.items():
                    f.attrs[k] = v
                f.attrs["patient_id"] = pid
                f.attrs["split"] = split
                f.attrs["label"] = -1 if pd.isna(label) else int(label)
            os.replace(tmp, final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{final}: cannot write HDF5 ({e})") from None
        written.append(final)
        if on_patient is not None:
            on_patient(pid)
    return written
