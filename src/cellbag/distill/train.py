"""Distillation: train the student end to end on raw image bags, taught by a teacher.

Only training-split patients are used: their labels, their images, the teacher's
out-of-fold targets for them. Test-split patients are dropped before anything about
them (label or image) is touched.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cellbag.core.allocator import tune_allocator
from cellbag.core.device import resolve_device
from cellbag.core.pixels import flip_rotate
from cellbag.core.train_loop import LoopState, cosine_schedule, train_loop
from cellbag.data.clinical import has_clinical_values
from cellbag.distill.errors import DistillError
from cellbag.distill.losses import LossWeights, distillation_loss
from cellbag.distill.model_dir import FORMAT, FORMAT_VERSION, save_model_dir
from cellbag.distill.sampler import BagSampler
from cellbag.distill.student import (
    DEFAULT_STUDENT,
    HeadConfig,
    StudentModel,
    StudentSpec,
    build_student,
    trainable_parameters,
)
from cellbag.distill.teacher import Teacher

DEFAULT_IMAGE_SIZE = 112


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (all recorded in the model's ``config.json``)."""

    student: str = DEFAULT_STUDENT
    weights: str | None = None  # student encoder's starting weights (None: preset default)
    image_size: int | None = DEFAULT_IMAGE_SIZE
    adapter: str | None = None  # an adapter kind (e.g. 'lora') or a saved adapter folder
    epochs: int = 8
    cells_per_bag: int = 64
    bags_per_step: int = 2
    encoder_batch: int = 64
    lr: float = 2e-4  # encoder (or adapter)
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    losses: LossWeights = field(default_factory=LossWeights)
    clinical: bool = True
    class_weighted: bool = True
    augment: bool = True
    grad_checkpointing: bool = False
    trainable_blocks: int | None = 3  # the encoder's last K blocks train; None or -1: all
    device: str = "auto"
    seed: int = 0
    threshold: float = 0.5
    head: HeadConfig = field(default_factory=HeadConfig)
    cache_mb: int = 2048
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise DistillError(f"epochs must be >= 1, got {self.epochs}")
        if self.encoder_batch < 1:
            raise DistillError(f"encoder batch must be >= 1, got {self.encoder_batch}")
        if not 0.0 <= self.threshold <= 1.0:
            raise DistillError(f"threshold must be in [0, 1], got {self.threshold}")


# ----------------------------------------------------------------------------- data


@dataclass
class TrainingSet:
    """Training patients with their cells (store order), labels, targets and clinical rows."""

    patient_ids: list[str]
    labels: np.ndarray  # int64 (n,)
    cell_ids: list[np.ndarray]
    paths: list[np.ndarray]
    teacher_probs: np.ndarray  # float32 (n,)
    teacher_attention: list[np.ndarray] | None
    teacher_embeddings: list[np.ndarray] | None
    clinical: np.ndarray  # float32 (n, c)
    scaler: Any = None

    @property
    def bag_sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.cell_ids], dtype=np.int64)


def training_patients(patients: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Ids and labels of the training split. Test-split rows are dropped before any label
    is read; a training patient without a label is an error."""
    train = patients.loc[patients["split"].astype(str) == "train", ["patient_id", "label"]]
    if train.empty:
        raise DistillError("no training patients (split 'train') in the cohort")
    unlabelled = train["label"].isna()
    if unlabelled.any():
        raise DistillError(
            f"training patient {train.loc[unlabelled, 'patient_id'].iloc[0]} has no label"
        )
    labels = np.array(train["label"].astype("int64").to_numpy(), dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise DistillError("training patients hold one class only; distillation needs both")
    return [str(p) for p in train["patient_id"]], labels


def prepare_training_set(
    store: Any,
    cohort: Any,
    teacher: Teacher,
    clinical: bool = True,
    need_embeddings: bool = True,
) -> TrainingSet:
    """Collect the training patients' cells, labels and teacher targets.

    Cells are those of ``store.bag_cells`` (readable cells, in the order of the teacher's
    embeddings and attention); their image paths come from ``cohort`` (the same cohort
    as the store's, possibly moved).
    """
    from cellbag.data import ClinicalScaler

    if cohort.fingerprint() != store.fingerprint:
        raise DistillError(
            f"{store.path}: store was made from another cohort than {cohort.root} "
            "(patients or cells differ)"
        )
    pids, labels = training_patients(cohort.patients)
    test = set(cohort.patients.loc[cohort.patients["split"] != "train", "patient_id"].astype(str))
    assert not test & set(pids), "test-split patients must never be used for training"
    path_of = dict(
        zip(cohort.cells["cell_id"].astype(str), cohort.cells["path"].astype(str), strict=True)
    )
    cell_ids, paths = [], []
    for pid in pids:
        ids = store.bag_cells(pid)["cell_id"].astype(str).to_numpy()
        if len(ids) == 0:
            raise DistillError(f"{store.path}: patient {pid} has no readable cell")
        cell_ids.append(ids)
        paths.append(np.array([path_of[c] for c in ids], dtype=object))
    embeddings = None
    if need_embeddings:
        embeddings = store.bags(teacher.encoder_id, pids)
        for pid, e, ids in zip(pids, embeddings, cell_ids, strict=True):
            if len(e) != len(ids) or not np.isfinite(e).all():
                raise DistillError(
                    f"{store.path}: patient {pid}: teacher embeddings of {teacher.encoder_id} "
                    "do not cover its cells"
                )
    att = None
    if teacher.attention is not None:
        att = [teacher.attention[p] for p in pids]
    train_rows = cohort.patients[cohort.patients["split"] == "train"].set_index("patient_id")
    train_rows = train_rows.loc[pids].reset_index()
    scaler = None
    if clinical:
        scaler = ClinicalScaler().fit(train_rows)
        clin = scaler.transform(train_rows)
    else:
        clin = np.zeros((len(pids), 0), np.float32)
    return TrainingSet(
        patient_ids=pids,
        labels=labels,
        cell_ids=cell_ids,
        paths=paths,
        teacher_probs=np.array([teacher.probabilities[p] for p in pids], np.float32),
        teacher_attention=att,
        teacher_embeddings=embeddings,
        clinical=clin.astype(np.float32),
        scaler=scaler,
    )


class PixelCache:
    """Decoded cells (uint8 S×S×3), decoded in threads, kept while under a memory budget."""

    def __init__(self, size: int, interpolation: str, budget_mb: int, workers: int = 2) -> None:
        self.size = size
        self.interpolation = interpolation
        self.budget = int(budget_mb) * 2**20
        self.used = 0
        self.store: dict[str, np.ndarray] = {}
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="cellbag-distill")
        self.read: set[str] = set()  # every path decoded (for auditing)

    def _decode(self, path: str) -> np.ndarray:
        from cellbag.featurize.images import decode_file

        d = decode_file(path, self.size, self.interpolation)
        if d.pixels is None:
            raise DistillError(f"{path}: {d.reason}")
        return d.pixels

    def get(self, paths: list[str]) -> np.ndarray:
        """(n, S, S, 3) uint8 pixels of ``paths``."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.store]
        fresh = dict(zip(todo, self.pool.map(self._decode, todo), strict=True))
        self.read.update(todo)
        for p, px in fresh.items():
            if self.used + px.nbytes <= self.budget:
                self.store[p] = px
                self.used += px.nbytes
        return np.stack([self.store.get(p, fresh.get(p)) for p in paths])

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- training


@dataclass
class DistillResult:
    """What a run produced: the student, its model folder, per-epoch losses, timings."""

    model: StudentModel
    out: Path | None
    history: list[dict[str, float]]
    seconds: float
    config: dict[str, Any]
    paths_read: set[str] = field(default_factory=set, repr=False)


def distill(
    store: Any,
    cohort: Any,
    teacher: Teacher,
    config: DistillConfig = DistillConfig(),
    out: str | Path | None = None,
    progress: bool = False,
    max_steps: int | None = None,
) -> DistillResult:
    """Train a student on ``cohort``'s training patients, taught by ``teacher``; write the
    deployable model folder to ``out`` (when given). ``max_steps`` stops early (tests)."""
    tune_allocator()  # each step's activation buffers are reused, not faulted in again
    t_start = time.perf_counter()
    losses = config.losses
    if losses.att > 0 and teacher.attention is None:
        losses = replace(losses, att=0.0)  # the teacher head has no per-cell weights
    if not losses.active():
        raise DistillError("every loss term is switched off; set at least one λ > 0")
    if config.clinical and not has_clinical_values(
        cohort.patients[cohort.patients["split"] == "train"]
    ):
        config = replace(config, clinical=False)  # as cv does: nothing to fuse
    data = prepare_training_set(
        store, cohort, teacher, config.clinical, need_embeddings=losses.emb > 0
    )
    run = resolve_device(config.device, error=DistillError)
    device, autocast = run.device, run.autocast
    torch.manual_seed(config.seed)
    teacher_dim = int(data.teacher_embeddings[0].shape[1]) if data.teacher_embeddings else None
    spec = StudentSpec(
        encoder=config.student,
        weights=config.weights,
        image_size=config.image_size,
        head=config.head,
        n_clinical=int(data.clinical.shape[1]),
        teacher_dim=teacher_dim if losses.emb > 0 else None,
    )
    model, enc = build_student(
        spec,
        adapter=config.adapter,
        device=str(device),
        seed=config.seed,
        trainable_blocks=config.trainable_blocks,
    )
    enc_params, head_params = trainable_parameters(model)
    # one cosine schedule from each group's lr down to a tenth of it: the encoder group
    # runs at ``lr_scale`` times the head's rate (timm's convention)
    groups = [{"params": head_params, "lr": config.head_lr}]
    if enc_params:
        groups.append(
            {"params": enc_params, "lr": config.head_lr, "lr_scale": config.lr / config.head_lr}
        )
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    sampler = BagSampler(data.bag_sizes, config.cells_per_bag, config.bags_per_step, config.seed)
    total_steps = config.epochs * len(sampler)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    scheduler = cosine_schedule(opt, total_steps, min_lr=0.1 * config.head_lr)
    n_pos = float(data.labels.sum())
    pos_weight = (len(data.labels) - n_pos) / max(n_pos, 1.0) if config.class_weighted else None
    workers = config.workers or (min(8, os.cpu_count() or 1) if device.type == "cuda" else 1)
    cache = PixelCache(enc.image_size, enc.interpolation, config.cache_mb, workers)
    gen = torch.Generator().manual_seed(config.seed)
    labels_t = torch.as_tensor(data.labels, dtype=torch.float32, device=device)
    tprobs_t = torch.as_tensor(data.teacher_probs, device=device)
    clin_t = torch.as_tensor(data.clinical, device=device)
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    t_epoch = 0.0

    def batches(state: LoopState):
        nonlocal t_epoch
        t_epoch = time.perf_counter()
        sums.clear()
        return sampler.epoch(state.epoch)

    def step(batch: list, state: LoopState) -> tuple[torch.Tensor, dict[str, float]]:
        idx = [b for b, _ in batch]
        paths = [p for b, sub in batch for p in data.paths[b][sub]]
        pixels = torch.from_numpy(cache.get(paths))
        if config.augment:
            pixels = flip_rotate(pixels, gen, channels_first=False).contiguous()
        emb = model.embed_cells(
            pixels.to(device, non_blocking=True),
            chunk=config.encoder_batch,
            grad_checkpointing=config.grad_checkpointing,
            autocast=autocast,
        )
        per_bag = list(torch.split(emb, [len(sub) for _, sub in batch]))
        it = torch.as_tensor(idx, device=device)
        logits, att, mask = model.forward_bags(per_bag, clin_t[it])
        kw: dict[str, Any] = {}
        if losses.att > 0:
            t_att = torch.zeros_like(att)
            for j, (b, sub) in enumerate(batch):
                t_att[j, : len(sub)] = torch.from_numpy(data.teacher_attention[b][sub])
            kw.update(attention=att, teacher_attention=t_att, mask=mask)
        if losses.emb > 0:
            t_emb = np.concatenate([data.teacher_embeddings[b][sub] for b, sub in batch])
            kw.update(
                projected=model.projection(emb),
                teacher_embeddings=torch.from_numpy(t_emb).to(device),
            )
        return distillation_loss(
            losses,
            logits=logits,
            labels=labels_t[it],
            teacher_probs=tprobs_t[it],
            pos_weight=pos_weight,
            **kw,
        )

    def add_parts(state: LoopState, value: float, parts: dict[str, float] | None) -> None:
        for k, v in (parts or {}).items():
            sums[k] = sums.get(k, 0.0) + v

    def end_epoch(state: LoopState, complete: bool) -> None:
        if state.step_in_epoch:
            n = state.step_in_epoch
            rec = {"epoch": state.epoch, **{k: v / n for k, v in sums.items()}}
            rec["seconds"] = round(time.perf_counter() - t_epoch, 3)
            history.append(rec)

    try:
        train_loop(
            model,
            opt,
            batches,
            step,
            epochs=config.epochs,
            steps_per_epoch=len(sampler),
            total_steps=total_steps,
            scheduler=scheduler,
            clip_grad=5.0,
            on_step=add_parts,
            on_epoch_end=end_epoch,
            nonfinite=lambda value, state: DistillError(
                f"loss became {value} at epoch {state.epoch} (lower --lr or check the data)"
            ),
            label="distill",
            progress=progress,
        )
    finally:
        cache.close()
    model.eval()
    seconds = time.perf_counter() - t_start
    doc = _model_config(model, enc, data, teacher, config, losses, history, seconds, str(device))
    out_path = None
    if out is not None:
        out_path = save_model_dir(model, out, doc)
    return DistillResult(model, out_path, history, seconds, doc, set(cache.read))


def _model_config(
    model: StudentModel,
    enc: Any,
    data: TrainingSet,
    teacher: Teacher,
    config: DistillConfig,
    losses: LossWeights,
    history: list[dict[str, float]],
    seconds: float,
    device: str,
) -> dict[str, Any]:
    import timm

    from cellbag import __version__

    spec = model.spec
    train_cfg = asdict(config)
    train_cfg["losses"] = asdict(losses)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "encoder": {
            "name": spec.encoder,
            "model": enc.metadata.get("model"),
            "weights": spec.weights,
            "weights_sha256": enc.metadata.get("weights_sha256"),
            "image_size": enc.image_size,
            "mean": list(enc.mean),
            "std": list(enc.std),
            "interpolation": enc.interpolation,
            "dim": enc.dim,
            "adapter": spec.adapter,
        },
        "head": {"kind": "gated-attention-mil", **asdict(spec.head), "n_clinical": spec.n_clinical},
        "clinical": {
            "enabled": config.clinical,
            "scaler": data.scaler.to_dict() if data.scaler is not None else None,
        },
        "threshold": config.threshold,
        "teacher": teacher.summary(),
        "student": {k: v for k, v in spec.to_dict().items() if k != "teacher_dim"},
        "training": {
            **train_cfg,
            "device": device,
            "n_patients": len(data.patient_ids),
            "n_cells": int(data.bag_sizes.sum()),
            "patients": data.patient_ids,
            "history": history,
            "seconds": round(seconds, 2),
        },
        "versions": {"cellbag": __version__, "torch": torch.__version__, "timm": timm.__version__},
    }
