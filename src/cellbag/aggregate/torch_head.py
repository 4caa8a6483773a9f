"""Training shared by the neural heads (imports torch; loaded only when such a head is used).

Bags are standardised with per-dimension statistics of the training cells and, when
``pca_dim`` is set and smaller than the width, projected on the training cells' first
principal axes (one affine map, fitted on the training cells only, label-free), then fed
as padded mini-batches (``mask`` marks real cells) of ``batch_size`` bags, by default
about an eighth of the model's training bags (4 to 32: ``auto_batch_size``), so a small
cohort still takes several optimizer steps per epoch. The loss is class-weighted BCE.

With ``context`` (a head parameter; abmil's default) each mapped cell ``z`` is fed as
``[z, (z - mean of its bag) / s]``, ``s`` the per-dimension spread of cells around their
own bag's mean over the training cells: the network sees each cell both as it is and
relative to the other cells of its patient, so what all of a patient's cells share (a
stain or scanner shift) can cancel while the bag mean stays available. Heads whose module
does this itself (abmil: ``context_in_module``) get ``z`` alone and compute the mean over
the cells they are given (in training, the drawn subset of a bag over ``max_cells_train``).

With ``inner_folds`` = k >= 2 the head is an average of k models, each trained on k-1
inner folds of the training bags and early-stopped on the remaining one: on ~80-bag
training folds one early stop on a 16-bag validation split is a noisy choice, and the
average of the k models is steadier. The held-out folds also give every training bag an
out-of-fold score, which late fusion with clinical features needs anyway. With
``inner_folds`` < 2, one model early-stops on a stratified ``val_fraction`` split.
Everything is seeded.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from cellbag.aggregate.base import Head, standardizer
from cellbag.aggregate.features import principal_axes
from cellbag.core.mil import masked_mean

#: training defaults shared by every neural head (one set for every dataset)
TRAIN = {
    "epochs": 60,
    "lr": 3e-3,
    "weight_decay": 1e-3,
    "batch_size": None,
    "patience": 15,
    "min_patience": 5,
    "inner_folds": 3,
    "val_fraction": 0.2,
    "max_cells_train": 256,
    "instance_dropout": 0.0,
    "max_tokens": 65536,
    "pca_dim": None,
}


#: with ``batch_size=None`` a model takes this many optimizer steps per epoch at least,
#: in batches of 4 to 32 bags
MIN_STEPS_PER_EPOCH = 8


def auto_batch_size(n_bags: int) -> int:
    """Bags per step for a model trained on ``n_bags``: about ``n_bags / 8``, between 4 and
    32. With a fixed 32, a 30-patient cohort's inner models (~16 bags) took one step per
    epoch and some never learned (rare-key cohorts of 30: abmil 0.66 AUC, 0.81 with 4)."""
    return int(min(32, max(4, -(-n_bags // MIN_STEPS_PER_EPOCH))))


def patience_after(best_epoch: int, patience: int, min_patience: int) -> int:
    """Epochs a model waits for a better validation loss after its best epoch so far: the
    best epoch's own number plus one, between ``min_patience`` and ``patience`` (patience
    that grows with progress, the classic rule). A model still improving late waits the
    full ``patience``; one whose best came in its first epochs, as on the real cohort's
    bags (best epoch 0-2 in 14 of 15 folds), stops after ``min_patience`` instead of
    training 15 more epochs that rarely find a better one."""
    return int(min(patience, max(min_patience, best_epoch + 1)))


def set_params_from(obj: object, params: dict) -> None:
    """Store constructor arguments as attributes (scikit-learn style: no validation)."""
    for k, v in params.items():
        if k not in ("self", "__class__"):
            setattr(obj, k, v)


def inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) index split; validation empty when too few bags."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(fraction * len(idx)))
        if len(idx) < 4 or n_val < 1:
            return np.arange(len(y)), np.zeros(0, np.int64)
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def pack_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of bags as their cells one after another, (N, D), and the (B, Lmax) mask of
    the padded layout (True = real cell, bag b's cells first in row b): what the heads'
    first layer reads. Padding 1,280-d inputs to the longest bag of the batch only to
    gather the real rows again was a fifth of a training step on real bags (16-198 cells)."""
    lens = torch.tensor([b.shape[0] for b in bags])
    mask = torch.arange(int(lens.max()))[None, :] < lens[:, None]
    return torch.cat(bags), mask


def masked_linear(
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.T + bias`` on the real cells of a batch only, as (B, L, out) with zeros
    at the padded positions (every head masks them downstream). ``x`` is the packed cells
    (N, d) of :func:`pack_bags` or a padded batch (B, L, d). The first layer is nearly all
    of a head's arithmetic, and a random batch of real bags (16 to 198 cells on the
    lymphocytosis cohort) is about half padding: this halves it."""
    full = bool(mask.all())
    if x.dim() == 3:  # padded: the real rows only
        if full:
            return torch.nn.functional.linear(x, weight, bias)
        x = x[mask]
    y = torch.nn.functional.linear(x, weight, bias)
    if full:
        return y.view(*mask.shape, -1)
    out = y.new_zeros(*mask.shape, weight.shape[0])
    out[mask] = y
    return out


def bag_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each bag's real cells, (B, D), from packed cells (N, D) or a padded batch."""
    if x.dim() == 3:
        return masked_mean(x, mask)
    lens = mask.sum(1)
    rows = torch.repeat_interleave(torch.arange(mask.shape[0]), lens)
    total = x.new_zeros(mask.shape[0], x.shape[1]).index_add_(0, rows, x)
    return total / lens.clamp_min(1).unsqueeze(1).to(x.dtype)


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the module's parameters, as one fused kernel where torch has it for the
    parameters' device (CPU since torch 2.4): a small head's optimizer step is many tiny
    tensors, and the per-tensor loop was a tenth of abmil's training on the real cohort.
    The update is Adam's; the last bits of a weight may differ from the unfused loop."""
    try:
        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without it
        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)


def eval_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Index batches sorted by length whose padded size stays under ``max_tokens`` cells."""
    order = np.argsort(lengths, kind="stable")
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_tokens:
            batches.append(np.asarray(cur))
            cur = []
        cur.append(i)
    if cur:
        batches.append(np.asarray(cur))
    return batches


class TorchHead(Head):
    """Base of neural heads: subclasses build an ``nn.Module`` with
    ``forward(x, mask, return_weights) -> (logits (B,), weights (B, L) or None)``."""

    #: the module widens its cells with the bag context itself (``context_std_``); when
    #: False, ``_tensors`` feeds the widened rows
    context_in_module = False

    # subclasses
    def build_module(self, dim: int) -> nn.Module:
        raise NotImplementedError

    # -- input map --------------------------------------------------------------------------
    def _fit_input_map(self, cells: np.ndarray) -> None:
        """Affine map x -> x @ W + b: standardisation (+ PCA) fitted on training cells.
        Without PCA, W is diagonal and kept as its diagonal (``input_scale_``): a (d, d)
        product per cell would cost d times the elementwise scaling, which for 1,536-d
        foundation-model features is most of a small head's training time."""
        rng = np.random.default_rng(self.seed)
        if len(cells) > 50000:
            cells = cells[np.sort(rng.choice(len(cells), 50000, replace=False))]
        self.feat_mean_, self.feat_std_ = standardizer(cells)
        d = cells.shape[1]
        self.input_weight_ = self.input_scale_ = None
        if self.pca_dim is None or self.pca_dim >= d:
            scale = 1.0 / self.feat_std_.astype(np.float64)
            self.input_scale_ = scale.astype(np.float32)
            self.input_bias_ = (-self.feat_mean_.astype(np.float64) * scale).astype(np.float32)
            return
        z = ((cells - self.feat_mean_) / self.feat_std_).astype(np.float64)
        comps, _ = principal_axes(z, self.pca_dim, self.seed)
        w = comps.T / self.feat_std_.astype(np.float64)[:, None]
        self.input_weight_ = w.astype(np.float32)
        self.input_bias_ = (-self.feat_mean_.astype(np.float64) @ w).astype(np.float32)

    def _map(self, x: np.ndarray) -> np.ndarray:
        """The fitted input map applied to cells (n, d) -> (n, width)."""
        if self.input_weight_ is None:
            return x * self.input_scale_ + self.input_bias_
        return x @ self.input_weight_ + self.input_bias_

    def _fit_context(self, bags: list[np.ndarray]) -> None:
        """Spread of the mapped training cells around their own bag's mean (``context``)."""
        self.context_std_ = None
        if getattr(self, "context", False):
            centred = [(z := self._map(x)) - z.mean(axis=0, keepdims=True) for x in bags]
            sd = np.concatenate(centred).std(axis=0)
            self.context_std_ = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)

    @property
    def in_dim_(self) -> int:
        widened = getattr(self, "context_std_", None) is not None and not self.context_in_module
        width = len(self.input_bias_)
        return (2 if widened else 1) * width

    def _tensors(self, bags: list[np.ndarray]) -> list[torch.Tensor]:
        sd = None if self.context_in_module else getattr(self, "context_std_", None)
        out = []
        for x in bags:
            z = self._map(x)
            if sd is not None:
                z = np.concatenate([z, (z - z.mean(axis=0, keepdims=True)) / sd], axis=1)
            out.append(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)))
        return out

    # -- training ---------------------------------------------------------------------------
    def _fit(self, bags: list[np.ndarray], y: np.ndarray) -> np.ndarray | None:
        from sklearn.model_selection import StratifiedKFold

        torch.manual_seed(self.seed)
        self._fit_input_map(np.concatenate(bags))
        self._fit_context(bags)
        xs = self._tensors(bags)
        k = int(min(self.inner_folds or 0, np.bincount(y).min()))
        self.modules_, self.best_epochs_, self.history_ = [], [], []
        if k >= 2:
            oof = np.zeros(len(y))
            skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
            for j, (tr, va) in enumerate(skf.split(np.zeros(len(y)), y)):
                module = self._train_one(xs, y, tr, va, self.seed + 7919 * j)
                oof[va] = self._logits([module], xs, va).double().numpy()
            return oof
        tr, va = inner_split(y, self.val_fraction, self.seed)
        self._train_one(xs, y, tr, va, self.seed)
        return None

    def _train_one(
        self, xs: list[torch.Tensor], y: np.ndarray, tr: np.ndarray, va: np.ndarray, seed: int
    ) -> nn.Module:
        """Train one module on bags ``tr``, early-stopped on the loss of bags ``va``."""
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        yt = torch.from_numpy(y.astype(np.float32))
        module = self.build_module(self.in_dim_)
        offsets = self._prepare_module(module, xs, y, tr)
        n_pos = float(y[tr].sum())
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(tr) - n_pos) / max(n_pos, 1)))
        opt = adamw(module, self.lr, self.weight_decay)
        lengths = np.array([x.shape[0] for x in xs])
        keep_frac = 1.0 - float(self.instance_dropout)
        batch_size = self.batch_size or auto_batch_size(len(tr))
        best, best_state, best_epoch, since = np.inf, None, -1, 0
        min_patience = getattr(self, "min_patience", self.patience)
        val_batches = self._padded(xs, va) if len(va) else None
        history: list[dict] = []
        untrained = self._start_candidate(module) if len(va) else None
        if untrained is not None:
            # a model of its own before any training (abmil's ``base``: the bag-mean
            # regression alone); it competes with the best epoch once training has stopped
            # (competing from the start, it cut the patience of models that learn slowly)
            init = copy.deepcopy(module.state_dict())
            module.load_state_dict(untrained)
            val_logits = self._logits([module], xs, va, padded=val_batches)
            start_loss = float(loss_fn(val_logits, yt[torch.as_tensor(va)]))
            module.load_state_dict(init)
        for epoch in range(self.epochs):
            module.train()
            perm = tr[rng.permutation(len(tr))]
            total = 0.0
            for start in range(0, len(perm), batch_size):
                idx = perm[start : start + batch_size]
                batch = []
                for i in idx:
                    n = int(lengths[i])
                    m = min(self.max_cells_train, max(1, int(round(keep_frac * n))))
                    if m < n:
                        batch.append(xs[i][torch.randperm(n, generator=gen)[:m]])
                    else:
                        batch.append(xs[i])
                x, mask = pack_bags(batch)
                if offsets is None:
                    logits, _ = module(x, mask)
                else:
                    logits, _ = module(x, mask, offset=offsets[torch.as_tensor(idx)])
                loss = loss_fn(logits, yt[torch.as_tensor(idx)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            rec = {"epoch": epoch, "train_loss": total / len(perm)}
            if len(va):
                val_logits = self._logits([module], xs, va, padded=val_batches)
                val = float(loss_fn(val_logits, yt[torch.as_tensor(va)]))
                rec["val_loss"] = val
                if val < best - 1e-4:
                    best, since, best_epoch = val, 0, epoch
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    since += 1
            history.append(rec)
            wait = patience_after(best_epoch, self.patience, min_patience)
            if len(va) and since >= wait:
                break
        if untrained is not None and start_loss <= best:
            best_state, best_epoch = untrained, -1
        if best_state is not None:
            module.load_state_dict(best_state)
        else:
            best_epoch = len(history) - 1
        module.eval()
        self.modules_.append(module)
        self.best_epochs_.append(best_epoch)
        self.history_.append(history)
        return module

    def _prepare_module(
        self, module: nn.Module, xs: list[torch.Tensor], y: np.ndarray, tr: np.ndarray
    ) -> torch.Tensor | None:
        """Fit what a module takes from its training bags before gradient descent (none
        here; abmil's ``base``). May return fixed offsets of every bag (len(xs),), given
        to the module in training as ``module(x, mask, offset=...)``."""
        return None

    def _start_candidate(self, module: nn.Module) -> dict | None:
        """A state of the untrained module that competes in early stopping as epoch -1
        (none here; abmil's ``base``: the base alone)."""
        return None

    @property
    def best_epoch_(self) -> float:
        """Mean best epoch over the models (what the cv run records)."""
        return float(np.mean(self.best_epochs_))

    # -- inference --------------------------------------------------------------------------
    def _padded(self, xs: list[torch.Tensor], idx: np.ndarray) -> list[tuple]:
        """Bags ``idx`` as evaluation batches of packed cells: (positions in idx, x, mask)."""
        lengths = np.array([xs[i].shape[0] for i in idx])
        return [
            (torch.as_tensor(sub), *pack_bags([xs[i] for i in idx[sub]]))
            for sub in eval_batches(lengths, self.max_tokens)
        ]

    @torch.inference_mode()
    def _logits(
        self, modules: list[nn.Module], xs: list[torch.Tensor], idx: np.ndarray, padded=None
    ):
        """Mean logit of ``modules`` over bags ``idx`` (batched under ``max_tokens``);
        ``padded``: those batches already made by ``_padded`` (the validation bags, scored
        after every epoch)."""
        was = [m.training for m in modules]
        for m in modules:
            m.eval()
        out = torch.zeros(len(idx))
        for sub, x, mask in padded if padded is not None else self._padded(xs, idx):
            out[sub] = torch.stack([m(x, mask)[0] for m in modules]).mean(0)
        for m, w in zip(modules, was, strict=True):
            m.train(w)
        return out

    def _decision(self, bags: list[np.ndarray]) -> np.ndarray:
        xs = self._tensors(bags)
        return self._logits(self.modules_, xs, np.arange(len(bags))).double().numpy()

    @torch.inference_mode()
    def _cell_weights(self, bags: list[np.ndarray]) -> list[np.ndarray]:
        xs = self._tensors(bags)
        lengths = np.array([b.shape[0] for b in bags])
        out: list[np.ndarray] = [np.zeros(0)] * len(bags)
        for sub in eval_batches(lengths, self.max_tokens):
            x, mask = pack_bags([xs[i] for i in sub])
            w = torch.stack([m(x, mask, return_weights=True)[1] for m in self.modules_]).mean(0)
            for j, i in enumerate(sub):
                out[i] = w[j, : lengths[i]].double().numpy()
        return out

    # -- persistence ------------------------------------------------------------------------
    def _get_state(self):
        arrays = {
            f"m{j}.{k}": v.detach().cpu().numpy()
            for j, module in enumerate(self.modules_)
            for k, v in module.state_dict().items()
        }
        arrays["feat_mean"] = self.feat_mean_
        arrays["feat_std"] = self.feat_std_
        if self.input_weight_ is None:
            arrays["input_scale"] = self.input_scale_
        else:
            arrays["input_weight"] = self.input_weight_
        arrays["input_bias"] = self.input_bias_
        if getattr(self, "context_std_", None) is not None:
            arrays["context_std"] = self.context_std_
        meta = {
            "n_models": len(self.modules_),
            "best_epochs": [int(e) for e in self.best_epochs_],
            "history": self.history_,
        }
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        self.feat_mean_ = arrays["feat_mean"]
        self.feat_std_ = arrays["feat_std"]
        # folders saved before the diagonal map was kept as a vector hold the full matrix
        self.input_weight_ = arrays.get("input_weight")
        self.input_scale_ = arrays.get("input_scale")
        self.input_bias_ = arrays["input_bias"]
        self.context_std_ = arrays.get("context_std")
        if hasattr(self, "context"):  # a model saved before ``context`` existed has none
            self.context = self.context_std_ is not None
        self.modules_ = []
        for j in range(int(meta["n_models"])):
            module = self.build_module(self.in_dim_)
            pre = f"m{j}."
            module.load_state_dict(
                {k[len(pre) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(pre)}
            )
            module.eval()
            self.modules_.append(module)
        self.best_epochs_ = list(meta.get("best_epochs", []))
        self.history_ = meta.get("history", [])
