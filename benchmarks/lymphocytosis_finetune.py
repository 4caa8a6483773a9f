"""Supervised adaptation nested in the folds (issue 30 §3): lite0's top block fine-tuned on
each outer training fold's bag labels, from cached mid-level activations.

    python benchmarks/lymphocytosis_finetune.py STORE SPLITS OUT [--mode finetune|frozen]
        [--encoder ID] [--epochs 6] [--cells 24] [--lr 1e-4] [--cache ACTS.npy]

``STORE`` holds a lite0 encoder (any ``--crop`` / ``--stain``); ``SPLITS`` is the
``splits.json`` of a ``cellbag cv`` run on it, so the figures pair with that run's heads.

1. Every training-split cell goes once through lite0 up to the end of ``blocks[5]``
   (192 x 7 x 7 activations at 224 px, float16; ``--cache`` keeps them between runs), with
   the encoder's own preprocessing: the rest of the network is what a fold trains.
2. For each outer fold, on its training patients only: a copy of the ImageNet top of
   lite0 (``blocks[6]``, ``conv_head``, ``bn2``: 0.9 M weights) and a linear read-out of
   the pooled 1,280 features are trained with the patient's label on each of its cells
   (instance-level, as ``instance logistic regression`` of docs/real-cohort.md), each
   epoch ``--cells`` cells drawn per patient, patients weighed so both classes count
   equally; AdamW, ``--lr`` for the top (``0`` in ``--mode frozen``: the control, the same
   read-out on lite0's own features), 10x for the read-out, batch-norm statistics frozen.
   A fixed schedule, no early stopping: nothing is chosen on the fold's test patients.
3. A test patient's probability is the sigmoid of its cells' mean logit.

Writes ``OUT/oof_predictions.csv`` (patient_id, label, repeat, fold, probability; the
fixed 0.5 cut) and ``OUT/finetune.json`` (settings, seconds), so
``benchmarks/lymphocytosis_levers.py compare`` pairs it with any head of the cv run.
No thresholds are nested here, so the triage columns stay empty. Never commit the output:
it is derived from patient images.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np


def mid_activations(enc, paths: list[str], batch: int = 64) -> np.ndarray:
    """(n, 192, 7, 7) float16: lite0 up to the end of ``blocks[5]``, eval mode."""
    import torch
    from PIL import Image

    m = enc.model.eval()
    out = None
    t = time.time()
    for i in range(0, len(paths), batch):
        pix = np.stack([enc.prepare(Image.open(p)) for p in paths[i : i + batch]])
        with torch.inference_mode():
            x = enc._normalize(torch.as_tensor(pix))
            x = m.bn1(m.conv_stem(x))
            for blk in m.blocks[:6]:
                x = blk(x)
        a = x.float().contiguous().numpy().astype(np.float16)
        if out is None:
            out = np.zeros((len(paths), *a.shape[1:]), np.float16)
        out[i : i + batch] = a
        if i % (20 * batch) == 0:
            n = min(i + batch, len(paths))
            print(f"  {n} cells, {n / (time.time() - t):.1f} cells/s", flush=True)
    return out


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options the probes on lite0's cached activations share."""
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--cache", default=None, help="an .npy of the cached activations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)


def open_lite0(store_path: str, encoder: str | None, cache: str | None, threads: int):
    """(store, encoder id, the lite0 encoder that made it, whether ``cache`` exists): the
    store read-only, torch on ``threads`` threads and glibc tuned, as featurize runs."""
    import torch

    from cellbag.aggregate.bags import resolve_encoder
    from cellbag.core.allocator import tune_allocator
    from cellbag.featurize.registry import create_encoder
    from cellbag.store.feature_store import Store

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tune_allocator()
    torch.set_num_threads(threads)
    store = Store.open(store_path, mode="r")
    enc_id = resolve_encoder(store, encoder)
    info = store.encoder_info(enc_id)
    enc = create_encoder(
        info.get("name", "tf_efficientnet_lite0"),
        crop=float(info.get("crop", 1.0)),
        stain=str(info.get("stain", "none")),
    )
    cached = bool(cache and os.path.exists(cache))
    if enc.id != enc_id and not cached:  # cached activations were checked when computed
        raise SystemExit(f"this code makes {enc.id}, the store holds {enc_id}")
    return store, enc_id, enc, cached


def cached_activations(enc, paths: list[str], cache: str | None, cached: bool) -> np.ndarray:
    """``mid_activations`` of ``paths``, read from ``cache`` when it exists (its row count
    checked), written there when given."""
    if cached:
        acts = np.load(cache)
        if len(acts) != len(paths):
            raise SystemExit(f"{cache}: {len(acts)} rows, the store has {len(paths)} cells")
        return acts
    acts = mid_activations(enc, paths)
    if cache:
        np.save(cache, acts)
    return acts


class Top:
    """The trainable top of lite0 and a linear read-out of its pooled features."""

    def __init__(self, enc, lr: float, seed: int) -> None:
        import torch
        from torch import nn

        torch.manual_seed(seed)
        m = enc.model
        self.top = nn.Sequential(
            copy.deepcopy(m.blocks[6]), copy.deepcopy(m.conv_head), copy.deepcopy(m.bn2)
        )
        self.readout = nn.Linear(m.num_features, 1)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        self.train_top = lr > 0
        for p in self.top.parameters():
            p.requires_grad_(self.train_top)
        groups = [{"params": self.readout.parameters(), "lr": 10 * (lr or 1e-4)}]
        if self.train_top:
            groups.append({"params": self.top.parameters(), "lr": lr})
        self.opt = torch.optim.AdamW(groups, weight_decay=1e-2)

    def logits(self, acts):
        import torch

        self.top.eval()  # batch-norm statistics stay ImageNet's
        with torch.set_grad_enabled(self.train_top and torch.is_grad_enabled()):
            f = self.top(acts).mean((2, 3))
        return self.readout(f).squeeze(1)


def fit_fold(enc, acts, cell_pat, y_pat, train_pats, args, seed: int) -> Top:
    import torch

    rng = np.random.default_rng(seed)
    model = Top(enc, args.lr if args.mode == "finetune" else 0.0, seed)
    rows = {p: np.flatnonzero(cell_pat == p) for p in train_pats}
    ys = np.array([y_pat[p] for p in train_pats])
    w_class = {c: 0.5 / max((ys == c).mean(), 1e-9) for c in (0, 1)}
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    for _ in range(args.epochs):
        idx, lab, wt = [], [], []
        for p in train_pats:
            r = rows[p]
            take = rng.choice(r, size=min(args.cells, len(r)), replace=False)
            idx.append(take)
            lab.append(np.full(len(take), y_pat[p], np.float32))
            wt.append(np.full(len(take), w_class[y_pat[p]] / len(take), np.float32))
        idx, lab, wt = np.concatenate(idx), np.concatenate(lab), np.concatenate(wt)
        order = rng.permutation(len(idx))
        for s in range(0, len(order), args.batch):
            b = order[s : s + args.batch]
            x = torch.from_numpy(acts[idx[b]].astype(np.float32))
            loss = loss_fn(model.logits(x), torch.from_numpy(lab[b])) * torch.from_numpy(wt[b])
            loss = loss.sum() / len(train_pats)
            model.opt.zero_grad()
            loss.backward()
            model.opt.step()
    return model


def predict(model: Top, acts, cell_pat, pats, batch: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for p in pats:
            r = np.flatnonzero(cell_pat == p)
            z = torch.cat(
                [
                    model.logits(torch.from_numpy(acts[r[s : s + batch]].astype(np.float32)))
                    for s in range(0, len(r), batch)
                ]
            )
            out.append(float(torch.sigmoid(z.mean())))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("splits")
    ap.add_argument("out")
    ap.add_argument("--mode", choices=["finetune", "frozen"], default="finetune")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cells", type=int, default=24, help="cells per patient per epoch")
    ap.add_argument("--batch", type=int, default=64)
    add_common_args(ap)
    args = ap.parse_args()

    import pandas as pd
    import torch

    store, enc_id, enc, cached = open_lite0(args.store, args.encoder, args.cache, args.threads)
    cells, pats = store.cells(enc_id), store.patients()
    train = pats[pats["split"].astype(str) == "train"]
    y_pat = dict(zip(train["patient_id"].astype(str), train["label"].astype(int), strict=True))
    keep = cells["patient_id"].astype(str).isin(y_pat).to_numpy()
    paths = cells["path"].astype(str).to_numpy()[keep].tolist()
    cell_pat = cells["patient_id"].astype(str).to_numpy()[keep]
    t0 = time.time()
    acts = np.ascontiguousarray(cached_activations(enc, paths, args.cache, cached))
    t_cache = time.time() - t0
    with torch.inference_mode():  # the frozen top reproduces the store's embeddings
        m = enc.model
        f = m.bn2(m.conv_head(m.blocks[6](torch.from_numpy(acts[:64].astype(np.float32)))))
        rows0 = np.flatnonzero(keep)[:64]
        gap = float(
            np.abs(
                f.mean((2, 3)).numpy() - store.read_rows(enc_id, 0, int(rows0[-1]) + 1)[rows0]
            ).max()
        )
    print(f"frozen top vs the store's embeddings: max |difference| {gap:.2e}", flush=True)
    print(f"{len(paths)} cells, activations {acts.shape} in {t_cache:.0f} s", flush=True)

    splits = json.loads(Path(args.splits).read_text())["splits"]
    rows = []
    t1 = time.time()
    for k, sp in enumerate(splits):
        tr = [str(p) for p in sp["train"]]
        te = [str(p) for p in sp["test"]]
        model = fit_fold(enc, acts, cell_pat, y_pat, tr, args, seed=args.seed + k)
        prob = predict(model, acts, cell_pat, te)
        for p, pr in zip(te, prob, strict=True):
            rows.append(
                {"patient_id": p, "label": y_pat[p], "repeat": sp["repeat"],
                 "fold": sp["fold"], "probability": pr}
            )  # fmt: skip
        print(f"  fold {k + 1}/{len(splits)}: {time.time() - t1:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "oof_predictions.csv", index=False)
    secs = time.time() - t1
    (out / "finetune.json").write_text(
        json.dumps({**vars(args), "encoder": enc_id, "cache_s": t_cache, "folds_s": secs}, indent=1)
    )
    from sklearn.metrics import roc_auc_score

    df = pd.DataFrame(rows)
    mean = df.groupby("patient_id").agg(label=("label", "first"), p=("probability", "mean"))
    print(f"{args.mode}: ROC AUC {roc_auc_score(mean['label'], mean['p']):.3f}; {secs:.0f} s")


if __name__ == "__main__":
    main()
