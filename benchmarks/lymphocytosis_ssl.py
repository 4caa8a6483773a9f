"""Self-supervision of lite0's top on the cohort's own cells (issue 30 §3): a contrastive
(SimCLR) or a self-distillation (DINO) objective, from cached mid-level activations,
measured beside the frozen encoder.

    python benchmarks/lymphocytosis_ssl.py STORE OUT [--objective simclr|dino]
        [--encoder ID] [--epochs 12] [--batch 128] [--lr 1e-4] [--temperature 0.2]
        [--cache ACTS.npy] [--heads meanpool,abmil,lgbm,svm] [--jobs 2] [--fused]
        [--cv-seed N]

``STORE`` holds a lite0 encoder (any ``--crop`` / ``--stain``) over both splits of a
challenge-layout cohort (the training patients, labelled, and the unlabelled test ones).

1. Every cell goes once through lite0 up to the end of ``blocks[5]`` (192 x 7 x 7 at 224
   px, float16; ``--cache`` keeps them between runs), with the encoder's own
   preprocessing (``lymphocytosis_finetune.mid_activations``).
2. A copy of lite0's ImageNet top (``blocks[6]``, ``conv_head``, ``bn2``; batch-norm
   statistics frozen) and a projection head (1,280 -> 512 -> 128) are trained with the
   SimCLR objective (NT-Xent, ``--temperature``) on the cells of the **test split only**:
   no label is read, and no patient whose figures are reported lent its cells, so the
   figures are not transductive. Two views of a cell: a random symmetry of the square
   (flips and 90-degree rotations of the activation map: a cell has no up), a random
   window of 5 x 5 to 7 x 7 of the 7 x 7 map scaled back to 7 x 7 (nearest: a zoom, as
   a random resized crop of the image), and channel dropout (0.1). A fixed schedule: nothing is chosen on the training patients.
   With ``--objective dino`` the top and a DINO head (1,280 -> 512 -> 256, then 1,024
   weight-normalised prototypes) are the student, their exponential moving average the
   teacher (momentum 0.99 -> 0.999, cosine); the teacher sees two global views (windows
   of 5 to 7), the student those and two local ones (windows of 3 to 4), and the student
   matches the teacher's centred, sharpened distribution (temperatures 0.1 and 0.04,
   centre momentum 0.9; the prototypes frozen in the first epoch), as Caron et al. 2021.
   The teacher's top embeds the cells.
3. The adapted top embeds every training-split cell (the whole map, pooled: 1,280-d),
   and the frozen top does the same (the control, equal to the store's rows up to the
   float16 cache); both go through ``cellbag.evaluate.cross_validate`` (5-fold x 3,
   seed 0, images only, the store's patient order), so ``OUT/ssl`` and ``OUT/frozen``
   pair with each other and with ``cellbag cv`` runs of the same store
   (``benchmarks/lymphocytosis_levers.py compare``); with ``--fused`` the same with the
   clinical values (late fusion, as ``cellbag cv --clinical``) in ``OUT/*-fused``.

Never commit OUT: it is derived from patient images.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from lymphocytosis_finetune import (  # noqa: E402
    add_common_args,
    cached_activations,
    open_lite0,
)


def views(x, rng: np.random.Generator, drop: float = 0.1, sizes: tuple[int, int] = (5, 7)):
    """A random view of each activation map of ``x`` (n, c, 7, 7): a symmetry of the
    square, a window of ``sizes`` (5 to 7) cells a side scaled back to the map's size,
    channel dropout."""
    import torch

    maps = []
    for a in x:
        k = int(rng.integers(4))
        a = torch.rot90(a, k, (1, 2))
        if rng.random() < 0.5:
            a = torch.flip(a, (2,))
        s = int(rng.integers(sizes[0], min(sizes[1], a.shape[1]) + 1))
        i, j = (int(rng.integers(0, a.shape[1] - s + 1)) for _ in range(2))
        a = a[:, i : i + s, j : j + s]
        if s < x.shape[2]:  # back to the full map: the top's convolutions want 7 x 7
            a = torch.nn.functional.interpolate(a[None], size=x.shape[2:], mode="nearest")[0]
        keep = torch.from_numpy((rng.random(a.shape[0]) >= drop).astype(np.float32))
        maps.append(a * keep[:, None, None] / (1 - drop))
    return torch.stack(maps)


def nt_xent(z1, z2, temperature: float):
    """SimCLR's loss of two batches of projections (n, d): each view's positive is the
    other view of its cell, its negatives the 2n - 2 other views."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def trainable_top(m):
    """A copy of lite0's top (``blocks[6]``, ``conv_head``, ``bn2``) whose weights train
    (the encoder's own are frozen for inference)."""
    from torch import nn

    top = nn.Sequential(
        copy.deepcopy(m.blocks[6]), copy.deepcopy(m.conv_head), copy.deepcopy(m.bn2)
    )
    for p in top.parameters():
        p.requires_grad_(True)
    return top


def train_ssl(enc, acts: np.ndarray, args) -> object:
    """The top, adapted by NT-Xent on ``acts`` (the test split's cells)."""
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    m = enc.model
    top = trainable_top(m)
    proj = nn.Sequential(nn.Linear(m.num_features, 512), nn.ReLU(), nn.Linear(512, 128))
    opt = torch.optim.AdamW(
        [
            {"params": top.parameters(), "lr": args.lr},
            {"params": proj.parameters(), "lr": 10 * args.lr},
        ],
        weight_decay=1e-4,
    )
    top.eval()  # batch-norm statistics stay ImageNet's; the weights train
    t = time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(len(acts))
        total, steps = 0.0, 0
        for s in range(0, len(order) - args.batch + 1, args.batch):
            x = torch.from_numpy(acts[np.sort(order[s : s + args.batch])].astype(np.float32))
            v1, v2 = views(x, rng), views(x, rng)
            f = top(torch.cat([v1, v2])).mean((2, 3))
            z = proj(f)
            loss = nt_xent(z[: len(x)], z[len(x) :], args.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        print(
            f"  epoch {epoch + 1}/{args.epochs}: loss {total / steps:.3f}, {time.time() - t:.0f} s",
            flush=True,
        )
    return top


def train_dino(enc, acts: np.ndarray, args) -> object:
    """The teacher's top after DINO self-distillation on ``acts`` (the test split's cells)."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    m = enc.model
    top = trainable_top(m)
    head = nn.Sequential(nn.Linear(m.num_features, 512), nn.GELU(), nn.Linear(512, 256))
    protos = nn.utils.parametrizations.weight_norm(nn.Linear(256, 1024, bias=False))
    protos.parametrizations.weight.original0.data.fill_(1.0)
    protos.parametrizations.weight.original0.requires_grad_(False)
    student = nn.ModuleDict({"top": top, "head": head, "protos": protos})
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(
        [
            {"params": top.parameters(), "lr": args.lr},
            {"params": [*head.parameters(), *protos.parameters()], "lr": 10 * args.lr},
        ],
        weight_decay=1e-4,
    )
    student.eval()  # batch-norm statistics stay ImageNet's; the weights train
    teacher.eval()

    def out(net, v):
        z = F.normalize(net["head"](net["top"](v).mean((2, 3))), dim=1)
        return net["protos"](z)

    center = torch.zeros(1024)
    steps_per_epoch = max(1, len(acts) // args.batch)
    total_steps, step = args.epochs * steps_per_epoch, 0
    t = time.time()
    for epoch in range(args.epochs):
        protos.parametrizations.weight.original1.requires_grad_(epoch > 0)
        order = rng.permutation(len(acts))
        total, steps = 0.0, 0
        for s in range(0, len(order) - args.batch + 1, args.batch):
            x = torch.from_numpy(acts[np.sort(order[s : s + args.batch])].astype(np.float32))
            glob = [views(x, rng, sizes=(5, 7)) for _ in range(2)]
            local = [views(x, rng, sizes=(3, 4)) for _ in range(2)]
            with torch.no_grad():
                t_out = out(teacher, torch.cat(glob)).chunk(2)
            s_out = out(student, torch.cat(glob + local)).chunk(4)
            loss, pairs = 0.0, 0
            for i, tq in enumerate(t_out):
                q = F.softmax((tq - center) / 0.04, dim=1)
                for j, sv in enumerate(s_out):
                    if i != j:
                        loss = loss + torch.sum(-q * F.log_softmax(sv / 0.1, dim=1), 1).mean()
                        pairs += 1
            loss = loss / pairs
            opt.zero_grad()
            loss.backward()
            opt.step()
            lam = 0.999 - 0.009 * (math.cos(math.pi * step / total_steps) + 1) / 2
            with torch.no_grad():
                for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                    pt.mul_(lam).add_(ps.detach(), alpha=1 - lam)
                center = 0.9 * center + 0.1 * torch.cat(t_out).mean(0, keepdim=True)
            step += 1
            total, steps = total + float(loss.detach()), steps + 1
        print(
            f"  epoch {epoch + 1}/{args.epochs}: loss {total / steps:.3f}, {time.time() - t:.0f} s",
            flush=True,
        )
    return teacher["top"]


def embed(top, acts: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    top.eval()
    with torch.inference_mode():
        return np.concatenate(
            [
                top(torch.from_numpy(acts[s : s + batch].astype(np.float32))).mean((2, 3)).numpy()
                for s in range(0, len(acts), batch)
            ]
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("out")
    ap.add_argument("--objective", choices=("simclr", "dino"), default="simclr")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--heads", default="meanpool,abmil,lgbm,svm")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fused", action="store_true", help="also cv with the clinical values")
    ap.add_argument("--cv-seed", type=int, default=None, help="the splits' seed (--seed)")
    add_common_args(ap)
    args = ap.parse_args()

    import torch

    from cellbag.aggregate import BagSet
    from cellbag.evaluate import cross_validate

    store, enc_id, enc, cached = open_lite0(args.store, args.encoder, args.cache, args.threads)
    cells, pats = store.cells(enc_id), store.patients()
    split = dict(zip(pats["patient_id"].astype(str), pats["split"].astype(str), strict=True))
    cell_pat = cells["patient_id"].astype(str).to_numpy()
    paths = cells["path"].astype(str).to_numpy().tolist()
    t0 = time.time()
    acts = cached_activations(enc, paths, args.cache, cached)
    t_cache = time.time() - t0
    is_test = np.array([split[p] == "test" for p in cell_pat])
    print(f"{len(paths)} cells ({is_test.sum()} of test patients), activations in {t_cache:.0f} s")

    t1 = time.time()
    top = (train_dino if args.objective == "dino" else train_ssl)(enc, acts[is_test], args)
    t_ssl = time.time() - t1
    frozen = torch.nn.Sequential(enc.model.blocks[6], enc.model.conv_head, enc.model.bn2)

    train = pats[pats["split"].astype(str) == "train"]
    ids = train["patient_id"].astype(str).tolist()
    y = train["label"].astype(int).to_numpy()
    rows = {p: np.flatnonzero(cell_pat == p) for p in ids}
    heads = [h for h in args.heads.split(",") if h]
    out = Path(args.out)
    result = {"settings": vars(args), "encoder": enc_id, "cache_s": t_cache, "ssl_s": t_ssl}
    clinical = train.drop(columns=["split", "label"], errors="ignore").reset_index(drop=True)
    adapted = "ssl" if args.objective == "simclr" else args.objective
    for name, model in (("frozen", frozen), (adapted, top)):
        keep = np.concatenate([rows[p] for p in ids])
        feats = embed(model, acts[keep])
        at = np.cumsum([0] + [len(rows[p]) for p in ids])
        bags = [feats[at[i] : at[i + 1]] for i in range(len(ids))]
        for what in ("images", "fused") if args.fused else ("images",):
            data = BagSet.from_arrays(bags, y, ids, clinical if what == "fused" else None)
            data.source = f"ssl-probe:{name}"
            run = out / (name if what == "images" else f"{name}-fused")
            t = time.time()
            cv_seed = args.seed if args.cv_seed is None else args.cv_seed
            cross_validate(data, heads, run, clinical=what == "fused", folds=5, repeats=3,
                           seed=cv_seed, quiet=True, jobs=args.jobs)  # fmt: skip
            result[f"cv_{name}_{what}_s"] = time.time() - t
            print(f"{name}, {what}: cv {time.time() - t:.0f} s", flush=True)
    (out / "ssl.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
