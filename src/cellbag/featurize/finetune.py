"""Instance-level fine-tuning of an encoder with an adapter, on patients' labels.

Each cell inherits its patient's label (a noisy instance label: most cells of a tumoral
patient look normal). Patients, not cells, are split into train / validation
(stratified, seeded; no patient on both sides). Two figures are reported on the
validation cells, both as balanced accuracy:

- ``probe``: a linear probe on the frozen encoder's pooled features;
- ``finetuned``: the encoder + adapter + linear head after fine-tuning (the head starts
  from the probe, "LP-FT"), measured after the last epoch (no selection on validation).

Output folder ``CKPT_DIR``: ``encoder.safetensors`` (the base weights, a timm state dict),
``adapter.json`` + ``adapter.safetensors`` (see :mod:`cellbag.featurize.adapters`),
``head.safetensors``, ``split.json`` and ``metrics.json``. Featurize with
``cellbag featurize --encoder NAME --weights CKPT_DIR/encoder.safetensors --adapter CKPT_DIR``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellbag.core.device import Device, resolve_device
from cellbag.core.io import save_safetensors, write_json
from cellbag.core.pixels import flip_rotate, normalize
from cellbag.core.train_loop import LoopState, cosine_schedule, seed_everything, train_loop
from cellbag.featurize import adapters as ad
from cellbag.featurize.errors import TrainingError
from cellbag.featurize.training import (
    CellImages,
    build_backbone,
    cohort_cells,
    make_loader,
    n_batches,
)

ENCODER_FILE = "encoder.safetensors"
HEAD_FILE = "head.safetensors"
METRICS = "metrics.json"
SPLIT = "split.json"


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y_true, y_pred))


def split_patients(
    patients: pd.DataFrame, val_fraction: float = 0.25, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Stratified patient split ``(train_ids, val_ids)``; each class keeps >= 1 on each side.

    Not sklearn's ``train_test_split(stratify=)``: it rounds the validation share over all
    classes, so with a few patients per class a class can end up on one side only."""
    if not 0.0 < val_fraction < 1.0:
        raise TrainingError(f"validation fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted(patients["label"].dropna().unique()):
        ids = sorted(patients.loc[patients["label"] == label, "patient_id"].astype(str))
        if len(ids) < 2:
            raise TrainingError(
                f"class {label} has {len(ids)} labelled patient(s); fine-tuning needs at least 2 "
                "per class for a patient-level validation split"
            )
        ids = [ids[i] for i in rng.permutation(len(ids))]
        k = min(max(1, int(round(len(ids) * val_fraction))), len(ids) - 1)
        val += ids[:k]
        train += ids[k:]
    return sorted(train), sorted(val)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: CellImages,
    precision: Device,
    mean: tuple,
    std: tuple,
    batch_size: int,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features ``(n_readable, dim)`` float32 and the dataset indices they belong to."""
    model.eval()
    feats, idx = [], []
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, workers=workers)
    for batch in loader:
        if batch is None:
            continue
        x = normalize(batch[0].to(precision.device), mean, std)
        with precision.context():
            f = model(x)
        feats.append(f.float().cpu())
        idx.append(batch[2])
    if not feats:
        raise TrainingError("no readable images to featurize")
    return torch.cat(feats).numpy(), torch.cat(idx).numpy()


def class_weights(y: np.ndarray, n_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * count_c)`` (balanced)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        raise TrainingError(f"a class has no training cells (counts {counts.tolist()})")
    return torch.tensor(len(y) / (n_classes * counts), dtype=torch.float32)


def fit_linear_probe(
    x: np.ndarray, y: np.ndarray, weights: torch.Tensor, l2: float = 1e-2, steps: int = 200
) -> nn.Linear:
    """A class-weighted logistic-regression head on features (standardisation folded in)."""
    xt = torch.from_numpy(x).double()
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mu) / sd
    yt = torch.from_numpy(y).long()
    lin = nn.Linear(x.shape[1], 2).double()
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss(weight=weights.double())

    def closure():
        opt.zero_grad()
        loss = loss_fn(lin(z), yt) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        w = lin.weight / sd
        head.weight.copy_(w.float())
        head.bias.copy_((lin.bias - (w * mu).sum(1)).float())
    return head


class Classifier(nn.Module):
    """Encoder (pooled features) followed by a linear head."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@torch.no_grad()
def _predict(
    clf: Classifier, dataset: CellImages, precision: Device, mean, std, batch_size, workers
) -> tuple[np.ndarray, np.ndarray]:
    clf.eval()
    probs, idx = [], []
    for batch in make_loader(dataset, batch_size, shuffle=False, seed=0, workers=workers):
        if batch is None:
            continue
        x = normalize(batch[0].to(precision.device), mean, std)
        with precision.context():
            logits = clf(x)
        probs.append(logits.float().softmax(-1)[:, 1].cpu())
        idx.append(batch[2])
    return torch.cat(probs).numpy(), torch.cat(idx).numpy()


def finetune(
    data: Any,
    out: str | Path,
    encoder: str = "vit_small_patch16_224",
    weights: str | None = None,
    adapter: str = "lora",
    adapter_options: dict[str, Any] | None = None,
    epochs: int = 5,
    image_size: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.25,
    seed: int = 0,
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``encoder`` + ``adapter`` on cells labelled by their patient; write ``out``.

    ``adapter`` is one of ``lora``, ``bottleneck``, ``adaptformer``, ``prompt`` or ``none``
    (every encoder weight trains). Returns the dict written to ``metrics.json`` with
    ``probe_val_balanced_accuracy`` and ``finetuned_val_balanced_accuracy``.
    """
    if adapter != "none" and adapter not in ad.list_adapters():
        raise TrainingError(
            f"unknown adapter {adapter!r}; choose one of {', '.join(ad.list_adapters())} or none"
        )
    if epochs < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: exists and is not a folder")
    precision = resolve_device(device, error=TrainingError)
    bs = batch_size or (128 if precision.is_cuda else 32)
    n_workers = precision.workers() if workers is None else int(workers)
    lr = lr if lr is not None else (1e-4 if adapter == "none" else 1e-3)
    seed_everything(seed)

    cells = cohort_cells(data, splits=("train",), labelled_only=True)
    patients = cells.groupby("patient_id", sort=False)["label"].first().reset_index()
    train_ids, val_ids = split_patients(patients, val_fraction, seed)
    tr_cells = cells[cells["patient_id"].isin(train_ids)].reset_index(drop=True)
    va_cells = cells[cells["patient_id"].isin(val_ids)].reset_index(drop=True)
    cache = n_workers == 0 and not precision.is_cuda
    backbone = build_backbone(encoder, weights, image_size, seed=seed)
    model, wsource = backbone.model, backbone.weights
    mean, std, image_size = backbone.mean, backbone.std, backbone.image_size
    tr_set = CellImages(tr_cells, image_size, backbone.interpolation, cache=cache)
    va_set = CellImages(va_cells, image_size, backbone.interpolation, cache=cache)
    model.to(precision.device)

    # 1. frozen encoder + linear probe
    t0 = time.perf_counter()
    f_tr, i_tr = extract_features(model, tr_set, precision, mean, std, bs, n_workers)
    f_va, i_va = extract_features(model, va_set, precision, mean, std, bs, n_workers)
    y_tr, y_va = tr_set.labels[i_tr], va_set.labels[i_va]
    cw = class_weights(y_tr)
    head = fit_linear_probe(f_tr, y_tr, cw)
    with torch.no_grad():
        p_probe = head(torch.from_numpy(f_va)).softmax(-1)[:, 1].numpy()
    probe_bacc = balanced_accuracy(y_va, (p_probe >= 0.5).astype(int))
    probe_s = time.perf_counter() - t0

    # 2. adapter (or full) fine-tuning, head initialised from the probe
    if adapter != "none":
        ad.add_adapter(model, adapter, **(adapter_options or {}))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    clf = Classifier(model, head).to(precision.device)
    params = [p for p in clf.parameters() if p.requires_grad]
    trainable, total = ad.count_parameters(clf)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=cw.to(precision.device))
    drop_last = len(tr_set) > bs
    per_epoch = n_batches(len(tr_set), bs, drop_last=drop_last)
    total_steps = per_epoch * epochs
    scheduler = cosine_schedule(optimizer, total_steps, warmup_steps=max(1, total_steps // 10))
    history: list[dict[str, Any]] = []
    losses: list[float] = []

    def batches(state: LoopState):
        return make_loader(
            tr_set,
            bs,
            shuffle=True,
            seed=seed,
            epoch=state.epoch,
            workers=n_workers,
            drop_last=drop_last,
            pin_memory=precision.is_cuda,
        )

    def step(batch: Any, state: LoopState) -> tuple[torch.Tensor, None]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + state.step)
        x = normalize(flip_rotate(batch[0], g).to(precision.device), mean, std)
        with precision.context():
            logits = clf(x)
        return loss_fn(logits.float(), batch[1].to(precision.device)), None

    def validate(state: LoopState, complete: bool) -> None:
        p_va, j_va = _predict(clf, va_set, precision, mean, std, bs, n_workers)
        bacc = balanced_accuracy(va_set.labels[j_va], (p_va >= 0.5).astype(int))
        history.append(
            {"epoch": state.epoch + 1, "train_loss": float(np.mean(losses)), "val_bacc": bacc}
        )
        losses.clear()

    t1 = time.perf_counter()
    train_loop(
        clf,
        optimizer,
        batches,
        step,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        scheduler=scheduler,
        on_step=lambda state, value, parts: losses.append(value),
        on_epoch_end=validate,
        nonfinite=lambda value, state: TrainingError(
            f"fine-tuning loss became {value}; lower --lr"
        ),
        label="fine-tune",
        progress=progress,
    )
    ft_s = time.perf_counter() - t1
    ft_bacc = history[-1]["val_bacc"]

    # 3. save: base weights, adapter, head, split, metrics
    out.mkdir(parents=True, exist_ok=True)
    base_sd = ad.base_state_dict(model)
    # whose images and labels trained this file: what its starting weights record, and
    # for a full fine-tune the training patients (their labels and images; the validation
    # patients are only scored). Featurizing with it carries the record into the store,
    # where `cv` and `fit` refuse label patients and mark image patients transductive. With
    # an adapter this file is the frozen base: the adapter holds the training patients.
    images = set(wsource.get("image_patients") or [])
    labels = set(wsource.get("label_patients") or [])
    if adapter == "none":
        images |= set(train_ids)
        labels |= set(train_ids)
    provenance = {
        f"cellbag_{key}": json.dumps(sorted(ids))
        for key, ids in (("image_patients", images), ("label_patients", labels))
        if ids
    }
    enc_sha = save_safetensors(
        base_sd,
        out / ENCODER_FILE,
        format="timm",
        model=encoder,
        image_size=image_size,
        **provenance,
    )
    if adapter != "none":
        ad.save_adapter(
            model,
            out,
            base_model=backbone.architecture,
            encoder_name=encoder,
            base_weights={"source": wsource["source"], "sha256": enc_sha, "file": ENCODER_FILE},
            image_size=image_size,
            trained_with="cellbag finetune",
            # whose labels trained it: carried into the store's encoder metadata at
            # featurize, where `cv` and `fit` refuse to score it on these patients
            label_patients=list(train_ids),
            validation_patients=list(val_ids),
        )
    save_safetensors(dict(clf.head.state_dict()), out / HEAD_FILE, classes="reactive,tumoral")
    write_json(out / SPLIT, {"seed": seed, "train": train_ids, "val": val_ids})
    unreadable = {**tr_set.unreadable, **va_set.unreadable}
    metrics = {
        "encoder": encoder,
        "weights_source": wsource,
        "adapter": adapter,
        "adapter_options": adapter_options or {},
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": bs,
        "lr": lr,
        "seed": seed,
        "device": str(precision.device),
        "autocast": str(precision.autocast) if precision.autocast else None,
        "n_train_patients": len(train_ids),
        "label_patients": list(train_ids),
        "n_val_patients": len(val_ids),
        "n_train_cells": int(len(y_tr)),
        "n_val_cells": int(len(y_va)),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "probe_val_balanced_accuracy": probe_bacc,
        "finetuned_val_balanced_accuracy": ft_bacc,
        "history": history,
        "probe_seconds": probe_s,
        "finetune_seconds": ft_s,
        "encoder_sha256": enc_sha,
        "unreadable": unreadable,
    }
    write_json(out / METRICS, metrics)
    return metrics
