"""Predict from raw image folders with a deployed student (no store, no teacher)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.core.allocator import tune_allocator
from cellbag.core.io import atomic_path
from cellbag.distill.errors import DistillError
from cellbag.distill.model_dir import DeployedStudent, load_student

SPLITS = ("auto", "test", "train", "all")


def select_patients(patients: pd.DataFrame, split: str) -> pd.DataFrame:
    """Patients to predict: ``auto`` is the test split when there is one, else everyone."""
    if split not in SPLITS:
        raise DistillError(f"unknown split {split!r} ({', '.join(SPLITS)})")
    if split == "auto":
        split = "test" if (patients["split"] == "test").any() else "all"
    chosen = patients if split == "all" else patients[patients["split"] == split]
    if chosen.empty:
        raise DistillError(f"no patients in split {split!r} to predict")
    return chosen.reset_index(drop=True)


def predict_images(
    model: str | Path | DeployedStudent,
    data: Any,
    split: str = "auto",
    batch_size: int = 64,
    device: str = "cpu",
    workers: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Probability per patient of ``data`` (a Cohort or a cohort path) from its raw images.

    Every readable cell of a patient is embedded (no sampling) and pooled by the head.
    Unreadable images are skipped with a warning; a patient with none left is an error.
    Returns columns patient_id, split, probability, predicted, n_cells.
    """
    from cellbag.data import Cohort, read_cohort
    from cellbag.featurize.images import decode_file

    tune_allocator()  # batches of image activations, as in featurize
    student = model if isinstance(model, DeployedStudent) else load_student(model, device)
    cohort = data if isinstance(data, Cohort) else read_cohort(data)
    patients = select_patients(cohort.patients, split)
    clinical = student.clinical(patients)
    size, interp = student.image_size, student.interpolation
    n_workers = workers or max(1, min(4, (os.cpu_count() or 2) // 2))
    cells = cohort.cells.groupby("patient_id", sort=False)["path"].apply(list)
    rows = []
    from cellbag.core.progress import progress_bar

    with (
        ThreadPoolExecutor(n_workers, thread_name_prefix="cellbag-predict") as pool,
        progress_bar("patients", enabled=progress) as bar,
    ):
        task = bar.add_task("predict", total=len(patients))
        for i, pid in enumerate(patients["patient_id"].astype(str)):
            paths = cells.get(pid, [])
            decoded = list(pool.map(lambda p: decode_file(p, size, interp), paths))
            pixels = [d.pixels for d in decoded if d.pixels is not None]
            for p, d in zip(paths, decoded, strict=True):
                if d.pixels is None:
                    warnings.warn(f"{p}: patient {pid}: {d.reason}; skipped", stacklevel=2)
            if not pixels:
                raise DistillError(f"{cohort.root}: patient {pid} has no readable image")
            emb = student.embed(np.stack(pixels), batch_size)
            prob, _ = student.predict_bags([emb], clinical[i : i + 1])
            rows.append(
                {
                    "patient_id": pid,
                    "split": str(patients.at[i, "split"]),
                    "probability": float(prob[0]),
                    "predicted": int(prob[0] >= student.threshold),
                    "n_cells": len(pixels),
                }
            )
            bar.advance(task)
    return pd.DataFrame(rows)


def write_predictions(table: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """Write ``Id,Predicted`` to ``out`` and ``Id,Probability,Predicted,split,n_cells`` beside
    it (``<stem>_proba.csv``, as ``cellbag predict`` does); each file written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proba_path = out.with_name(out.stem + "_proba.csv")
    ids = table["patient_id"].astype(str)
    sub = pd.DataFrame({"Id": ids, "Predicted": table["predicted"].astype(int)})
    proba = pd.DataFrame(
        {
            "Id": ids,
            "Probability": table["probability"].astype(float),
            "Predicted": table["predicted"].astype(int),
            "split": table["split"],
            "n_cells": table["n_cells"].astype(int),
        }
    )
    for df, path in ((sub, out), (proba, proba_path)):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    return out, proba_path
