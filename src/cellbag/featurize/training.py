"""Shared pieces of encoder training (MAE pretraining and fine-tuning).

Cell image datasets with unreadable-image skipping, batch augmentation that respects
cells (flips and quarter turns), device / precision choices, the cosine schedule with
warm-up, building a timm backbone from a weight source, and atomic file writes.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cellbag.errors import CellbagError


class TrainingError(CellbagError, ValueError):
    """Bad input to MAE pretraining or fine-tuning (names the file, patient or model)."""


# ----------------------------------------------------------------------------- device


@dataclass(frozen=True)
class Precision:
    """Where and how to run: device, autocast dtype (bf16 on CUDA only), default batch."""

    device: torch.device
    autocast: torch.dtype | None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def context(self):
        """An autocast context (bf16 on CUDA) or a no-op one."""
        import contextlib

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)


def resolve_device(device: str | None = None) -> Precision:
    """``device`` None/'auto' picks CUDA when present; bf16 autocast only on CUDA."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise TrainingError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} asked for but CUDA is not available")
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    return Precision(dev, torch.bfloat16 if bf16 else None)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and quarter turn per image (cells have no orientation)."""
    b = x.shape[0]
    flips = torch.randint(0, 2, (b,), generator=generator).tolist()
    turns = torch.randint(0, 4, (b,), generator=generator).tolist()
    out = []
    for i in range(b):
        xi = x[i]
        if flips[i]:
            xi = xi.flip(-1)
        if turns[i]:
            xi = torch.rot90(xi, turns[i], dims=(-2, -1))
        out.append(xi)
    return torch.stack(out)


def normalize(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 ``(B,3,H,W)`` to float normalised by the model's mean/std."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


def default_workers(precision: Precision) -> int:
    """Decoding workers: several on a GPU machine, none on CPU (the model is the bottleneck)."""
    if not precision.is_cuda:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# ----------------------------------------------------------------------------- schedule


def cosine_lr(step: int, total: int, warmup: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    t = min(max(t, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------- backbone


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Backbone:
    """A trainable timm model built like ``create_encoder`` builds it, and its input recipe."""

    model: nn.Module
    name: str  # the preset or timm name asked for
    architecture: str  # the timm model name
    weights: dict[str, Any]  # {"source", "sha256"}
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
        weights={"source": enc.metadata["weights"], "sha256": enc.metadata["weights_sha256"]},
        image_size=enc.image_size,
        mean=tuple(enc.mean),
        std=tuple(enc.std),
        interpolation=enc.interpolation,
    )


# ----------------------------------------------------------------------------- files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name beside ``path`` and rename (never a half file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, **metadata: Any) -> str:
    """Atomically save tensors (contiguous, CPU) with string metadata; returns the sha256."""
    from safetensors.torch import save

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    blob = save(data, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def write_json(path: str | Path, doc: dict) -> None:
    import json

    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())
