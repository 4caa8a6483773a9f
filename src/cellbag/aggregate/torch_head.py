"""Training loop shared by the neural heads (imports torch; loaded only when such a head is used).

Bags are standardised with per-dimension statistics of the training cells and projected
on the training cells' first ``pca_dim`` principal axes (one affine map, fitted on the
training data only; it makes the first layer ~6x cheaper on 384-d embeddings and
regularises small cohorts), then fed as padded mini-batches (``mask`` marks real cells). The loss is class-weighted BCE; early
stopping watches the loss on an inner, patient-level stratified validation split of the
training data and restores the best epoch. Everything is seeded.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from cellbag.aggregate.base import Head, standardizer


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


def pad(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Lmax, D) zero-padded batch and (B, Lmax) bool mask (True = real cell)."""
    lens = torch.tensor([b.shape[0] for b in bags])
    x = nn.utils.rnn.pad_sequence(bags, batch_first=True)
    mask = torch.arange(x.shape[1])[None, :] < lens[:, None]
    return x, mask


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
    ``forward(x, mask, clin) -> (logits (B,), weights (B, L) or None)``."""

    def __init__(
        self,
        clinical: bool = True,
        seed: int = 0,
        epochs: int = 50,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 32,
        patience: int = 15,
        val_fraction: float = 0.2,
        max_cells_train: int = 512,
        max_tokens: int = 65536,
        pca_dim: int | None = 64,
    ) -> None:
        super().__init__(clinical=clinical, seed=seed)
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.max_cells_train = max_cells_train
        self.max_tokens = max_tokens
        self.pca_dim = pca_dim

    # subclasses
    def build_module(self, dim: int, n_clinical: int) -> nn.Module:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------
    def _fit_input_map(self, cells: np.ndarray) -> None:
        """Affine map x -> x @ W + b: standardisation (+ PCA) fitted on training cells."""
        rng = np.random.default_rng(self.seed)
        if len(cells) > 50000:
            cells = cells[np.sort(rng.choice(len(cells), 50000, replace=False))]
        self.feat_mean_, self.feat_std_ = standardizer(cells)
        d = cells.shape[1]
        if self.pca_dim is None or self.pca_dim >= d:
            w = np.diag(1.0 / self.feat_std_.astype(np.float64))
        else:
            z = (cells - self.feat_mean_) / self.feat_std_
            z = z.astype(np.float64)
            _, vecs = np.linalg.eigh(z.T @ z / max(len(z) - 1, 1))
            comps = vecs[:, ::-1][:, : self.pca_dim]
            signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
            comps = comps * np.where(signs == 0, 1.0, signs)[None, :]
            w = comps / self.feat_std_.astype(np.float64)[:, None]
        self.input_weight_ = w.astype(np.float32)
        self.input_bias_ = (-self.feat_mean_.astype(np.float64) @ w).astype(np.float32)

    @property
    def in_dim_(self) -> int:
        return int(self.input_weight_.shape[1])

    def _tensors(self, bags: list[np.ndarray]) -> list[torch.Tensor]:
        w, b = self.input_weight_, self.input_bias_
        return [torch.from_numpy(x @ w + b) for x in bags]

    def _forward(self, xs: list[torch.Tensor], clin: torch.Tensor, idx: np.ndarray, weights=False):
        x, mask = pad([xs[i] for i in idx])
        c = clin[torch.as_tensor(idx)]
        return self.module_(x, mask, c, return_weights=weights)

    # -- training ---------------------------------------------------------------------------
    def _fit(self, bags: list[np.ndarray], clinical: np.ndarray, y: np.ndarray) -> None:
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        tr, va = inner_split(y, self.val_fraction, self.seed)
        if len(va) == 0:
            tr = np.arange(len(y))
        self._fit_input_map(np.concatenate([bags[i] for i in tr]))
        xs = self._tensors(bags)
        clin = torch.from_numpy(clinical)
        yt = torch.from_numpy(y.astype(np.float32))
        self.module_ = self.build_module(self.in_dim_, self.n_clinical_)
        n_pos = float(y[tr].sum())
        pos_weight = torch.tensor((len(tr) - n_pos) / max(n_pos, 1.0))
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        opt = torch.optim.AdamW(
            self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        lengths = np.array([b.shape[0] for b in bags])
        best, best_state, since = np.inf, None, 0
        self.history_: list[dict] = []
        for epoch in range(self.epochs):
            self.module_.train()
            perm = tr[rng.permutation(len(tr))]
            total = 0.0
            for start in range(0, len(perm), self.batch_size):
                idx = perm[start : start + self.batch_size]
                batch = []
                for i in idx:
                    b = xs[i]
                    if lengths[i] > self.max_cells_train:
                        keep = torch.randperm(int(lengths[i]), generator=gen)[
                            : self.max_cells_train
                        ]
                        b = b[keep]
                    batch.append(b)
                x, mask = pad(batch)
                logits, _ = self.module_(x, mask, clin[torch.as_tensor(idx)])
                loss = loss_fn(logits, yt[torch.as_tensor(idx)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            rec = {"epoch": epoch, "train_loss": total / len(perm)}
            if len(va):
                logits = self._logits(xs, clin, va)
                val = float(loss_fn(logits, yt[torch.as_tensor(va)]))
                rec["val_loss"] = val
                if val < best - 1e-4:
                    best, since = val, 0
                    best_state = copy.deepcopy(self.module_.state_dict())
                    self.best_epoch_ = epoch
                else:
                    since += 1
            self.history_.append(rec)
            if len(va) and since >= self.patience:
                break
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        else:
            self.best_epoch_ = len(self.history_) - 1
        self.module_.eval()

    @torch.inference_mode()
    def _logits(self, xs: list[torch.Tensor], clin: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        was = self.module_.training
        self.module_.eval()
        lengths = np.array([xs[i].shape[0] for i in idx])
        out = torch.empty(len(idx))
        for sub in eval_batches(lengths, self.max_tokens):
            logits, _ = self._forward(xs, clin, idx[sub])
            out[torch.as_tensor(sub)] = logits
        self.module_.train(was)
        return out

    def _predict(self, bags: list[np.ndarray], clinical: np.ndarray) -> np.ndarray:
        xs = self._tensors(bags)
        logits = self._logits(xs, torch.from_numpy(clinical), np.arange(len(bags)))
        return torch.sigmoid(logits).double().numpy()

    @torch.inference_mode()
    def _cell_weights(self, bags: list[np.ndarray], clinical: np.ndarray) -> list[np.ndarray]:
        xs = self._tensors(bags)
        clin = torch.from_numpy(clinical)
        self.module_.eval()
        lengths = np.array([b.shape[0] for b in bags])
        out: list[np.ndarray] = [np.zeros(0)] * len(bags)
        for sub in eval_batches(lengths, self.max_tokens):
            _, w = self._forward(xs, clin, sub, weights=True)
            for j, i in enumerate(sub):
                out[i] = w[j, : lengths[i]].double().numpy()
        return out

    # -- persistence ------------------------------------------------------------------------
    def _get_state(self):
        arrays = {
            f"module.{k}": v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()
        }
        arrays["feat_mean"] = self.feat_mean_
        arrays["feat_std"] = self.feat_std_
        arrays["input_weight"] = self.input_weight_
        arrays["input_bias"] = self.input_bias_
        meta = {"best_epoch": int(getattr(self, "best_epoch_", -1)), "history": self.history_}
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        self.feat_mean_ = arrays["feat_mean"]
        self.feat_std_ = arrays["feat_std"]
        self.input_weight_ = arrays["input_weight"]
        self.input_bias_ = arrays["input_bias"]
        self.module_ = self.build_module(self.in_dim_, self.n_clinical_)
        state = {
            k[len("module.") :]: torch.from_numpy(v)
            for k, v in arrays.items()
            if k.startswith("module.")
        }
        self.module_.load_state_dict(state)
        self.module_.eval()
        self.best_epoch_ = meta.get("best_epoch", -1)
        self.history_ = meta.get("history", [])


def fuse(pooled: torch.Tensor, clin: torch.Tensor) -> torch.Tensor:
    """Clinical fusion by concatenation after pooling (see ``ClassifierOnPooled``)."""
    return torch.cat([pooled, clin], dim=1) if clin.shape[1] else pooled


class ClassifierOnPooled(nn.Module):
    """Bag classifier on ``[pooled ; clinical]``.

    Fusion is a concatenation after pooling, not FiLM: the cohort is small (~160
    patients) and there are only a handful of clinical features, so FiLM's extra
    per-channel scale/shift parameters would mostly add variance; concatenation keeps
    the clinical effect additive on the logit (what a clinician's logistic model does)
    and leaves the attention over cells purely image-driven, so per-cell weights mean
    the same with and without clinical data.
    """

    def __init__(self, width: int, n_clinical: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width + n_clinical, 1)

    def forward(self, pooled: torch.Tensor, clin: torch.Tensor) -> torch.Tensor:
        return self.out(fuse(self.drop(pooled), clin)).squeeze(1)
