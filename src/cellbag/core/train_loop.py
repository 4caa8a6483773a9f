"""One training loop for the stages that train a network on images: encoder fine-tuning
(``cellbag finetune``), MAE pretraining (``cellbag pretrain-mae``) and distillation
(``cellbag distill``).

The loop owns what they share: epochs of batches, the per-step learning rate (a timm
scheduler, e.g. :func:`cosine_schedule`), zero-grad / backward / optional gradient
clipping / step, stopping on a non-finite loss before it reaches the weights, a step
budget, one progress bar, checkpoints every N steps and at each epoch's end, and
resuming mid-epoch from a :class:`LoopState`. A stage supplies the parts that differ as
hooks: the batches of an epoch, how a batch becomes a loss (``step``), what happens at an
epoch's end (validation, history, early stopping) and how to checkpoint.

The stage-2 heads (``aggregate/torch_head.py``) keep their own few-line loop for now;
they could adopt this one unchanged: ``batches`` yields their padded mini-batches,
``step`` returns the BCE loss, and ``on_epoch_end`` computes the validation loss, keeps
the best state and returns True to stop early (no scheduler, no checkpoint, no bar).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cellbag.core.progress import progress_bar
from cellbag.errors import CellbagError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
) -> Any:
    """timm's ``CosineLRScheduler``, stepped per optimiser step: linear warm-up reaching
    the group's lr at the last of ``warmup_steps`` (``lr * (step + 1) / warmup_steps``),
    then cosine decay to ``min_lr`` at ``total_steps``. A group's ``lr_scale`` multiplies
    its learning rate (timm's convention). Make it before loading a saved optimiser
    state: it keeps the groups' starting learning rates."""
    from timm.scheduler import CosineLRScheduler

    class WarmCosine(CosineLRScheduler):
        def _get_lr(self, t: int) -> list[float]:
            if t < self.warmup_t:
                return [v * (t + 1) / self.warmup_t for v in self.base_values]
            return super()._get_lr(t)

    quiet = logging.getLogger(CosineLRScheduler.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # timm warns that a one-step schedule does nothing
    try:
        return WarmCosine(
            optimizer,
            t_initial=max(1, total_steps - warmup_steps),
            lr_min=min_lr,
            warmup_t=warmup_steps,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    finally:
        quiet.setLevel(level)


def weight_decay_groups(
    model: torch.nn.Module, weight_decay: float, no_decay: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Parameter groups (decayed first) by timm's ``param_groups_weight_decay``: biases,
    norms and other 1-d tensors, and names matching ``no_decay`` patterns, get none."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0.0)


@dataclass
class LoopState:
    """Where a run is: the epoch (0-based), optimiser steps in all calls and in this
    epoch, steps in this call, seconds spent in steps, and whether it stopped early."""

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    steps_now: int = 0
    seconds: float = 0.0
    stopped: bool = False


Batch = Any
StepFn = Callable[[Batch, LoopState], "tuple[torch.Tensor, dict[str, float] | None]"]


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[LoopState], Iterable[Batch]],
    step: StepFn,
    *,
    epochs: int,
    steps_per_epoch: int,
    total_steps: int | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    state: LoopState | None = None,
    scheduler: Any = None,
    clip_grad: float | None = None,
    on_step: Callable[[LoopState, float, dict[str, float] | None], None] | None = None,
    on_epoch_end: Callable[[LoopState, bool], bool | None] | None = None,
    checkpoint: Callable[[LoopState], None] | None = None,
    checkpoint_every: int = 0,
    nonfinite: Callable[[float, LoopState], Exception] | None = None,
    label: str = "train",
    progress: bool = False,
) -> LoopState:
    """Train ``model`` from ``state`` (a fresh one by default) and return the final state.

    ``batches(state)`` yields the batches of ``state.epoch`` after the first
    ``state.step_in_epoch`` (None items are skipped); ``step(batch, state)`` returns the
    loss (and optional figures to log). The loop stops after ``epochs``, after
    ``total_steps`` steps in all, after ``max_steps`` steps in this call, after the first
    step that ends ``max_seconds`` (wall clock, data loading included) or more after this
    call began, or when ``on_epoch_end(state, complete)`` returns True.
    ``checkpoint(state)`` runs every ``checkpoint_every`` steps, when a run stops
    mid-epoch and after each epoch (then ``state.epoch`` already counts it). A non-finite
    loss raises ``nonfinite(value, state)`` before the weights change.
    """
    state = state or LoopState()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    budget = total_steps if total_steps is not None else epochs * steps_per_epoch
    deadline = time.perf_counter() + max_seconds if max_seconds is not None else math.inf
    with progress_bar("steps", enabled=progress, extra="loss {task.fields[loss]:.4f}") as bar:
        task = bar.add_task(label, total=budget, completed=state.step, loss=float("nan"))
        while state.epoch < epochs and state.step < budget:
            model.train()
            bar.update(task, description=f"{label} epoch {state.epoch + 1}/{epochs}")
            for batch in batches(state):
                if batch is None:
                    continue
                t0 = time.perf_counter()
                if scheduler is not None:
                    scheduler.step_update(state.step)
                loss, parts = step(batch, state)
                value = float(loss.detach())
                if not math.isfinite(value):
                    if nonfinite is not None:
                        raise nonfinite(value, state)
                    raise CellbagError(f"{label}: loss became {value} at step {state.step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad)
                optimizer.step()
                state.seconds += time.perf_counter() - t0
                state.step += 1
                state.step_in_epoch += 1
                state.steps_now += 1
                if on_step is not None:
                    on_step(state, value, parts)
                bar.update(task, advance=1, loss=value)
                if (
                    state.step >= budget
                    or (max_steps is not None and state.steps_now >= max_steps)
                    or time.perf_counter() >= deadline
                ):
                    state.stopped = True
                    break
                if (
                    checkpoint is not None
                    and checkpoint_every
                    and state.step % checkpoint_every == 0
                ):
                    checkpoint(state)
            complete = not state.stopped or state.step_in_epoch >= steps_per_epoch
            stop = bool(on_epoch_end(state, complete)) if on_epoch_end is not None else False
            if not complete:
                if checkpoint is not None:
                    checkpoint(state)
                break
            state.epoch += 1
            state.step_in_epoch = 0
            if checkpoint is not None:
                checkpoint(state)
            if state.stopped or stop:
                state.stopped = True
                break
    return state
