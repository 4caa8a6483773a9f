"""Masked-autoencoder (MAE) pretraining of a timm ViT on unlabelled cells.

The encoder *is* the timm ``VisionTransformer``: its own ``patch_embed``, ``pos_embed``,
``cls_token`` (and register tokens), ``blocks`` and ``norm`` process the visible patches,
so the trained weights are a plain timm state dict. A light decoder (a few narrow
transformer blocks, fixed 2-D sin-cos positions) reconstructs the masked patches; the
loss is the MSE on per-patch normalised pixels of the masked patches only.

Checkpoint folder ``CKPT_DIR``:

- ``checkpoint.safetensors``: model (encoder + decoder) and optimiser tensors, with the
  config, epoch / step, history and the optimiser's plain settings as JSON in its metadata
  (data, never code: no pickle is read); written atomically every ``save_every`` steps
  and at each epoch end; a rerun resumes from it;
- ``encoder.safetensors``: the encoder alone, a timm state dict (``num_classes=0``) at the
  trained image size (metadata: model, image_size);
- ``mae.json``: config, loss per epoch, throughput, encoder sha256.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cellbag.core.device import resolve_device
from cellbag.core.io import save_safetensors, write_json
from cellbag.core.pixels import flip_rotate, normalize
from cellbag.core.train_loop import (
    LoopState,
    cosine_schedule,
    seed_everything,
    train_loop,
    weight_decay_groups,
)
from cellbag.featurize.errors import TrainingError
from cellbag.featurize.training import (
    CellImages,
    build_backbone,
    cohort_cells,
    make_loader,
    n_batches,
)

CHECKPOINT = "checkpoint.safetensors"
ENCODER_FILE = "encoder.safetensors"
SUMMARY = "mae.json"


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions ``(grid_h * grid_w, dim)`` (MAE's decoder positions:
    sin and cos of the row, then of the column; timm's ``build_sincos2d_pos_embed``)."""
    from timm.layers import build_sincos2d_pos_embed

    if dim % 4:
        raise TrainingError(f"MAE decoder dim {dim} must be divisible by 4")
    return build_sincos2d_pos_embed(list(grid), dim, temperature=10000.0, interleave_sin_cos=True)


def patchify(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` to ``(B, N, patch*patch*C)`` in row-major patch order."""
    b, c, h, w = imgs.shape
    gh, gw = h // patch, w // patch
    x = imgs.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def _check_vit(encoder: nn.Module) -> None:
    needed = ("patch_embed", "pos_embed", "blocks", "norm", "num_prefix_tokens")
    missing = [a for a in needed if getattr(encoder, a, None) is None]
    if missing:
        name = getattr(encoder, "pretrained_cfg", {}).get("architecture", type(encoder).__name__)
        raise TrainingError(
            f"MAE needs a timm ViT with absolute positions; {name} lacks {', '.join(missing)}"
        )


class MaskedAutoencoder(nn.Module):
    """MAE around a timm ViT encoder with a light decoder."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder_dim: int = 256,
        decoder_depth: int = 2,
        decoder_heads: int = 8,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        _check_vit(encoder)
        self.encoder = encoder
        pe = encoder.patch_embed
        self.patch = int(pe.patch_size[0])
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        dim = int(encoder.embed_dim)
        chans = int(pe.proj.in_channels)
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos", sincos_pos_embed(decoder_dim, self.grid).unsqueeze(0), persistent=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks, self.decoder_norm]:
            m.apply(_init_weights)

    # -- encoder ---------------------------------------------------------------------
    def random_masking(
        self, batch: int, mask_ratio: float, generator: torch.Generator | None, device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids_keep (B, K), mask (B, N) 1=masked, ids_restore (B, N))``."""
        n = self.num_patches
        keep = max(1, int(round(n * (1.0 - mask_ratio))))
        noise = torch.rand(batch, n, generator=generator).to(device)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :keep]
        mask = torch.ones(batch, n, device=device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return ids_keep, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible patches through the timm ViT; returns ``(B, prefix + K, dim)``."""
        enc = self.encoder
        x = enc.patch_embed(imgs)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        npt = int(enc.num_prefix_tokens)
        pos = enc.pos_embed
        if getattr(enc, "no_embed_class", False):
            x = x + pos
            prefix_pos = None
        else:
            x = x + pos[:, npt:]
            prefix_pos = pos[:, :npt]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = []
        if getattr(enc, "cls_token", None) is not None:
            prefix.append(enc.cls_token.expand(x.shape[0], -1, -1))
        if getattr(enc, "reg_token", None) is not None:
            prefix.append(enc.reg_token.expand(x.shape[0], -1, -1))
        if prefix:
            p = torch.cat(prefix, dim=1)
            if prefix_pos is not None and prefix_pos.shape[1]:
                p = p + prefix_pos
            x = torch.cat([p, x], dim=1)
        x = enc.pos_drop(x)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x)

    # -- decoder ---------------------------------------------------------------------
    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels ``(B, N, patch*patch*C)``."""
        npt = int(self.encoder.num_prefix_tokens)
        x = self.decoder_embed(latent)
        prefix, vis = x[:, :npt], x[:, npt:]
        b, k, d = vis.shape
        masks = self.mask_token.to(vis.dtype).expand(b, self.num_patches - k, -1)
        full = torch.cat([vis, masks], dim=1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        full = full + self.decoder_pos.to(full.dtype)
        x = torch.cat([prefix, full], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, npt:])

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on (per-patch normalised) pixels of the masked patches."""
        target = patchify(imgs, self.patch).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, pred, mask)`` for a batch of normalised images."""
        ids_keep, mask, ids_restore = self.random_masking(
            imgs.shape[0], mask_ratio, generator, imgs.device
        )
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class MAEConfig:
    """What a run is; a resumed run must match on the fields in ``IDENTITY``."""

    model: str = "vit_small_patch16_224"
    weights: str = "none"
    image_size: int = 224
    mask_ratio: float = 0.75
    epochs: int = 20
    batch_size: int = 64
    base_lr: float = 1.5e-4  # per 256 images (MAE's scaling rule)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    norm_pix_loss: bool = True
    include_test: bool = False
    #: the test split's cells only: no patient that ``cv`` scores lends its pixels
    test_only: bool = False
    seed: int = 0
    save_every: int = 500

    IDENTITY = (
        "model",
        "weights",
        "image_size",
        "mask_ratio",
        "batch_size",
        "decoder_dim",
        "decoder_depth",
        "decoder_heads",
        "norm_pix_loss",
        "include_test",
        "test_only",
        "seed",
    )

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


def export_encoder(
    mae: MaskedAutoencoder,
    path: str | Path,
    config: MAEConfig,
    image_patients: list[str] | None = None,
    label_patients: list[str] | None = None,
) -> str:
    """Save the encoder as a plain timm state dict; returns its sha256. ``image_patients``
    (the patients whose cells it was pretrained on) goes into the file's metadata
    (``cellbag_image_patients``): featurizing with it carries the record into the store,
    where ``cellbag cv`` marks the figures of those patients as transductive.
    ``label_patients``: the labels its starting weights were fine-tuned on, passed on
    (``cellbag cv`` refuses to score those patients)."""
    sd = mae.encoder.state_dict()
    meta: dict[str, Any] = dict(
        format="timm", model=config.model, image_size=config.image_size, source="mae"
    )
    if image_patients is not None:
        meta["cellbag_image_patients"] = json.dumps(sorted(image_patients))
    if label_patients:
        meta["cellbag_label_patients"] = json.dumps(sorted(label_patients))
    return save_safetensors(sd, path, **meta)


_MODEL, _OPTIM = "model/", "optimizer/"


def write_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Save a training checkpoint as tensors + JSON (one safetensors file, atomically).

    Model tensors go under ``model/``, the optimiser's per-parameter tensors under
    ``optimizer/<param>/<key>``; the optimiser's plain values (param groups, non-tensor
    state) and ``meta`` go to the file's metadata as JSON. Nothing in it is code.
    """
    tensors = {_MODEL + k: v for k, v in model_state.items()}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, slots in optimizer_state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{pid}/{key}"] = value
            else:
                plain_state.setdefault(str(pid), {})[key] = value
    doc = dict(
        meta, optimizer={"param_groups": optimizer_state["param_groups"], "state": plain_state}
    )
    save_safetensors(tensors, path, cellbag_checkpoint=json.dumps(doc))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`write_checkpoint`: its meta dict plus ``model`` and
    ``optimizer`` state dicts; a file that is not one is a one-line ``TrainingError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            doc = json.loads((f.metadata() or {})["cellbag_checkpoint"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        model = {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}
        opt = doc.pop("optimizer")
        state: dict[int, dict[str, Any]] = {
            int(pid): dict(slots) for pid, slots in opt["state"].items()
        }
        for k, v in tensors.items():
            if k.startswith(_OPTIM):
                pid, key = k[len(_OPTIM) :].split("/", 1)
                state.setdefault(int(pid), {})[key] = v
        doc["config"]  # noqa: B018 - a checkpoint without a config is not one
    except Exception as e:  # not safetensors, no metadata, bad JSON, missing keys...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainingError(f"{path}: unreadable checkpoint ({msg}); remove it") from None
    return dict(doc, model=model, optimizer={"state": state, "param_groups": opt["param_groups"]})


def pretrain_mae(
    data: Any,
    out: str | Path,
    model: str = "vit_small_patch16_224",
    weights: str | None = None,
    epochs: int = 20,
    mask_ratio: float = 0.75,
    batch_size: int | None = None,
    image_size: int | None = None,
    include_test: bool = False,
    test_only: bool = False,
    seed: int = 0,
    device: str | None = None,
    workers: int | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Pretrain ``model`` as an MAE on the cells of ``data``; resumes from ``out`` if it can.

    ``weights`` None means the preset's default source (``hub`` for ViTs); ``image_size``
    None the preset's size. Images come from the training split only unless ``include_test`` (a transductive
    choice: the test images, never their labels, shape the encoder) or ``test_only`` (the
    test split's images only: the patients ``cellbag cv`` scores stay new to the encoder,
    so its figures are not transductive). The patients whose images trained it go into
    ``encoder.safetensors`` and ``mae.json`` (``image_patients``). ``max_steps`` stops
    early after that many optimiser steps in this call (a checkpoint is written), which
    is how tests simulate an interruption. ``max_seconds`` stops after the step that
    spends that wall-clock budget in this call (a time-boxed run, e.g. to measure steps/s
    on a lent GPU): the checkpoint is written, so a rerun resumes. Returns the summary
    written to ``mae.json``.
    """
    if include_test and test_only:
        raise TrainingError("choose one of --include-test and --test-only")
    if not 0.0 < mask_ratio < 1.0:
        raise TrainingError(f"mask ratio must be in (0, 1), got {mask_ratio}")
    if epochs < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    if max_seconds is not None and not max_seconds > 0:
        raise TrainingError(f"max seconds must be > 0, got {max_seconds}")
    precision = resolve_device(device, error=TrainingError)
    bs = batch_size or (256 if precision.is_cuda else 32)
    if image_size is None:
        from cellbag.featurize.registry import get_preset

        preset = get_preset(model)
        image_size = preset.image_size if preset else 224
    cfg = MAEConfig(
        model=model,
        weights=str(weights) if weights is not None else "default",
        image_size=int(image_size),
        mask_ratio=float(mask_ratio),
        epochs=int(epochs),
        batch_size=int(bs),
        include_test=bool(include_test),
        test_only=bool(test_only),
        seed=int(seed),
        **options,
    )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    saved = None
    if ckpt_path.exists():
        saved = read_checkpoint(ckpt_path)
        old = saved["config"]
        # a setting added since the checkpoint was made counts at its default
        defaults = {f.name: f.default for f in fields(MAEConfig)}
        diff = [k for k in MAEConfig.IDENTITY if old.get(k, defaults[k]) != getattr(cfg, k)]
        if diff:
            raise TrainingError(
                f"{ckpt_path}: checkpoint was made with other settings ({', '.join(diff)}); "
                "use another --out or remove it"
            )

    seed_everything(cfg.seed)
    splits = ("test",) if cfg.test_only else ("train", "test") if cfg.include_test else ("train",)
    cells = cohort_cells(data, splits=splits)
    if len(cells) < cfg.batch_size:
        raise TrainingError(
            f"only {len(cells)} cells in split(s) {', '.join(splits)}, fewer than the batch size "
            f"{cfg.batch_size}; lower --batch-size"
        )
    backbone = build_backbone(cfg.model, weights, cfg.image_size, seed=cfg.seed)
    encoder, wsource = backbone.model, backbone.weights
    mean, std = backbone.mean, backbone.std
    mae = MaskedAutoencoder(
        encoder,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        norm_pix_loss=cfg.norm_pix_loss,
    )
    mae.to(precision.device)  # before loading a saved optimiser state (kept on its device)
    optimizer = torch.optim.AdamW(
        weight_decay_groups(mae, cfg.weight_decay, no_decay=("*token*", "*pos_embed*")),
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    history: list[dict[str, Any]] = []
    epoch_losses: list[float] = []

    dataset = CellImages(
        cells,
        cfg.image_size,
        backbone.interpolation,
        cache=workers in (None, 0) and not precision.is_cuda,
    )
    n_workers = precision.workers() if workers is None else int(workers)
    per_epoch = n_batches(len(dataset), cfg.batch_size, drop_last=True)
    total = per_epoch * cfg.epochs
    scheduler = cosine_schedule(optimizer, total, int(round(cfg.warmup_epochs * per_epoch)))
    state = LoopState()  # the scheduler keeps the base lr: load the optimiser after it
    if saved is not None:
        mae.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = LoopState(saved["epoch"], saved["global_step"], saved["step_in_epoch"])
        history = saved["history"]
        epoch_losses = list(saved.get("epoch_losses", [])) if state.step_in_epoch else []
        del saved
    images_seen = 0

    def checkpoint(state: LoopState) -> None:
        write_checkpoint(
            ckpt_path,
            mae.state_dict(),
            optimizer.state_dict(),
            {
                "config": asdict(cfg),
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "global_step": state.step,
                "history": history,
                "epoch_losses": epoch_losses,
                "weights_source": wsource,
            },
        )

    def batches(state: LoopState):
        if state.step_in_epoch == 0:
            epoch_losses.clear()
        return make_loader(
            dataset,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=state.epoch,
            workers=n_workers,
            skip_batches=state.step_in_epoch,
            drop_last=True,
            pin_memory=precision.is_cuda,
        )

    def step(batch: Any, state: LoopState) -> tuple[torch.Tensor, None]:
        nonlocal images_seen
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
        imgs = flip_rotate(batch[0], g).to(precision.device, non_blocking=True)
        imgs = normalize(imgs, mean, std)
        images_seen += imgs.shape[0]
        with precision.context():
            loss, _, _ = mae(imgs, cfg.mask_ratio, generator=g)
        return loss, None

    def end_epoch(state: LoopState, complete: bool) -> None:
        if complete:
            loss = float(np.mean(epoch_losses)) if epoch_losses else None
            history.append({"epoch": state.epoch + 1, "loss": loss, "steps": state.step})

    t_loop = time.perf_counter()
    state = train_loop(
        mae,
        optimizer,
        batches,
        step,
        epochs=cfg.epochs,
        steps_per_epoch=per_epoch,
        max_steps=max_steps,
        max_seconds=max_seconds,
        state=state,
        scheduler=scheduler,
        on_step=lambda state, value, parts: epoch_losses.append(value),
        on_epoch_end=end_epoch,
        checkpoint=checkpoint,
        checkpoint_every=cfg.save_every,
        nonfinite=lambda value, state: TrainingError(
            f"MAE loss became {value} at step {state.step}; lower the learning rate"
        ),
        label="MAE",
        progress=progress,
    )
    t_loop = time.perf_counter() - t_loop
    epoch, global_step, steps_now, t_train = (
        state.epoch,
        state.step,
        state.steps_now,
        state.seconds,
    )
    stopped_by = None
    if epoch < cfg.epochs and state.stopped:
        stopped_by = (
            "max_steps" if max_steps is not None and steps_now >= max_steps else "max_seconds"
        )

    # the starting weights' own record joins (pretraining continued from a cellbag file)
    image_patients = sorted(
        set(cells["patient_id"].astype(str)) | set(wsource.get("image_patients") or [])
    )
    sha = export_encoder(
        mae, out / ENCODER_FILE, cfg, image_patients, wsource.get("label_patients")
    )
    unreadable = dict(dataset.unreadable)
    summary = {
        "config": asdict(cfg),
        "weights_source": wsource,
        "n_images": len(dataset),
        "splits": list(splits),
        "transductive": cfg.include_test,
        # whose cells shaped the encoder (also in encoder.safetensors, for featurize)
        "image_patients": image_patients,
        "epochs_done": epoch,
        "global_step": global_step,
        "finished": epoch >= cfg.epochs,
        "stopped_by": stopped_by,
        "max_seconds": max_seconds,
        "history": history,
        "last_step_losses": epoch_losses[-20:],
        "encoder": {"path": str((out / ENCODER_FILE).resolve()), "sha256": sha},
        "device": str(precision.device),
        "autocast": str(precision.autocast) if precision.autocast else None,
        "step_time_s": (t_train / steps_now) if steps_now else None,
        "images_per_s": (images_seen / t_train) if t_train else None,
        "steps_now": steps_now,
        "images_now": images_seen,
        "loop_seconds": t_loop,  # wall clock of this call's loop: loading and checkpoints too
        "unreadable": unreadable,
    }
    write_json(out / SUMMARY, summary)
    return summary


def read_summary(out: str | Path) -> dict[str, Any]:
    """The ``mae.json`` of a checkpoint folder."""
    p = Path(out) / SUMMARY
    if not p.is_file():
        raise TrainingError(f"{p}: not found (run cellbag pretrain-mae first)")
    return json.loads(p.read_text())
