"""Cells for encoder training (MAE pretraining and fine-tuning): the cohort's cells with
their labels, an image dataset that skips unreadable images, a seeded loader, and a
trainable timm backbone built exactly as ``cellbag featurize`` builds its encoder.

The loop, device, pixel and file mechanics live in :mod:`cellbag.core`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cellbag.featurize.errors import TrainingError

# ----------------------------------------------------------------------------- data


def cohort_cells(
    data: Any, splits: tuple[str, ...] = ("train",), labelled_only: bool = False
) -> pd.DataFrame:
    """Cells of ``data`` (a Cohort or a cohort path) in ``splits`` with their patient's label.

    Columns: cell_id, patient_id, path, split, label (Int64). Cells of unlabelled patients
    are dropped when ``labelled_only``.
    """
    from cellbag.data import Cohort, read_cohort

    cohort = data if isinstance(data, Cohort) else read_cohort(data)
    pats = cohort.patients[["patient_id", "split", "label"]]
    cells = cohort.cells.merge(pats, on="patient_id", how="left", validate="many_to_one")
    cells = cells[cells["split"].isin(list(splits))]
    if labelled_only:
        cells = cells[cells["label"].notna()]
    cells = cells.reset_index(drop=True)
    if cells.empty:
        what = "labelled " if labelled_only else ""
        raise TrainingError(f"{cohort.root}: no {what}cells in split(s) {', '.join(splits)}")
    return cells


def load_cell_image(path: str | Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Decode an image as RGB uint8 ``(3, size, size)``, exactly as ``cellbag featurize`` does."""
    from PIL import Image

    from cellbag.featurize.images import prepare

    with Image.open(path) as im:
        im.load()
        return np.ascontiguousarray(prepare(im, size, interpolation).transpose(2, 0, 1))


class CellImages(Dataset):
    """Cells as uint8 tensors ``(3, S, S)`` with an integer label (-1 when unknown).

    Unreadable images yield None (dropped by :func:`collate_cells`, listed in
    ``unreadable``). With ``cache`` the decoded images stay in memory (use with
    ``workers=0``; each worker process would keep its own copy).
    """

    def __init__(
        self,
        cells: pd.DataFrame,
        image_size: int,
        interpolation: str = "bicubic",
        cache: bool = False,
    ) -> None:
        self.paths = [str(p) for p in cells["path"]]
        self.patients = [str(p) for p in cells["patient_id"]]
        if "label" in cells:
            lab = pd.array(cells["label"], dtype="Int64").fillna(-1)
            self.labels = np.asarray(lab, dtype=np.int64)
        else:
            self.labels = np.full(len(self.paths), -1, np.int64)
        self.image_size = int(image_size)
        self.interpolation = interpolation
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.unreadable: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.cache is not None and i in self.cache:
            img = self.cache[i]
        else:
            try:
                img = load_cell_image(self.paths[i], self.image_size, self.interpolation)
            except Exception as e:  # any decode failure: skip the cell, keep training
                self.unreadable[self.paths[i]] = f"patient {self.patients[i]}: {e}"
                return None
            if self.cache is not None:
                self.cache[i] = img
        return torch.from_numpy(img), int(self.labels[i]), i


def collate_cells(items: list):
    """Stack readable items: ``(images uint8 (B,3,S,S), labels (B,), indices (B,))``."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    imgs, labels, idx = zip(*items, strict=True)
    return torch.stack(imgs), torch.tensor(labels), torch.tensor(idx)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    workers: int = 0,
    skip_batches: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose order depends only on (seed, epoch); ``skip_batches`` resumes mid-epoch."""
    n = len(dataset)
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if drop_last:
        order = order[: (n // batch_size) * batch_size]
    order = order[skip_batches * batch_size :]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=workers,
        collate_fn=collate_cells,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


# ----------------------------------------------------------------------------- backbone


@dataclass
class Backbone:
    """A trainable timm model built like ``create_encoder`` builds it, and its input recipe."""

    model: nn.Module
    name: str  # the preset or timm name asked for
    architecture: str  # the timm model name
    weights: dict[str, Any]  # {"source", "sha256"[, "image_patients", "label_patients"]}
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str


def build_backbone(
    name: str, weights: str | None = None, image_size: int | None = None, seed: int = 0
) -> Backbone:
    """The encoder's model with its classifier removed, ready to train (train mode, grads on).

    Built by :func:`cellbag.featurize.create_encoder` so weights sources (``none``, ``hub``,
    ``package:...``, a local file), image size and normalisation are exactly the ones
    ``cellbag featurize`` uses.
    """
    from cellbag.featurize.registry import create_encoder

    enc = create_encoder(name, weights=weights, image_size=image_size, device="cpu", seed=seed)
    model = enc.model
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
    model.requires_grad_(True).train()
    return Backbone(
        model=model,
        name=name,
        architecture=str(enc.metadata["model"]),
        weights={
            "source": enc.metadata["weights"],
            "sha256": enc.metadata["weights_sha256"],
            # what the starting weights record of their own training (a cellbag file)
            **{
                k: enc.metadata[k]
                for k in ("image_patients", "label_patients")
                if enc.metadata.get(k)
            },
        },
        image_size=enc.image_size,
        mean=tuple(enc.mean),
        std=tuple(enc.std),
        interpolation=enc.interpolation,
    )
