"""The image path end to end on real images: MNIST-bags from scikit-learn's digits.

Every other image figure of the README is measured on the synthetic demo cohorts. Here
the bags are real handwritten scans: scikit-learn's 1,797 digits (8 x 8, no download)
cut into ~173 bags of ~10 images, each image in one bag only, a bag positive when it
holds a 9 (``mil_public.digit_bag_indices``, Ilse et al. 2018, section 5.3). The script
writes them as image files (dark ink on white, upscaled to ``--size`` px) with a
manifest, a labels table and the key cells (``is_key``: the 9s), then runs what a user
runs:

    cellbag featurize DATA/manifest.csv STORE.zarr          # the offline default encoder
    cellbag cv STORE.zarr --head ... --no-clinical --cell-truth DATA/truth.csv

and prints each head's out-of-fold ROC AUC with its interval, the paired difference of
the instance-weighing heads against mean pooling, and the instance AUC of each head's
cell weights for the 9s (is the cell a head points at the digit that decides?). Then
``cellbag index`` and, for every cell, its 10 nearest cells of other bags
(``neighbors --other-patients``): the share of them showing the same digit, for the 9s
and for all digits (chance: ~0.10).

    python benchmarks/digit_images.py [--heads meanpool,maxpool,abmil,transformer,lgbm]
        [--folds 5] [--repeats 3] [--size 64] [--out runs/digit_images]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mil_public import digit_bag_indices  # noqa: E402

HEADS = ("meanpool", "maxpool", "abmil", "transformer", "lgbm", "svm", "ensemble")


def write_cohort(out: Path, size: int) -> Path:
    """Image files, ``manifest.csv`` (patient_id, image_path), ``clinical.csv`` (patient_id,
    label) and ``truth.csv`` (cell_id, is_key) under ``out``; returns the manifest."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    bags, y = digit_bag_indices()
    rows, truth = [], []
    for b, idx in enumerate(bags):
        pid = f"D{b:03d}"
        (out / pid).mkdir(parents=True, exist_ok=True)
        for i in idx:
            name = f"{pid}/img{i:04d}.png"
            ink = 255 - np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
            img = Image.fromarray(ink, "L").resize((size, size), Image.BILINEAR).convert("RGB")
            img.save(out / name)
            rows.append((pid, name))
            truth.append((name, int(digits.target[i] == 9)))
    pd.DataFrame(rows, columns=["patient_id", "image_path"]).to_csv(
        out / "manifest.csv", index=False
    )
    pids = [f"D{b:03d}" for b in range(len(bags))]
    pd.DataFrame({"patient_id": pids, "label": y}).to_csv(out / "clinical.csv", index=False)
    pd.DataFrame(truth, columns=["cell_id", "is_key"]).to_csv(out / "truth.csv", index=False)
    return out / "manifest.csv"


def cellbag(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "cellbag", *args], text=True)
    if r.returncode:
        raise SystemExit(f"cellbag {args[0]} failed ({r.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="pixels of the written images")
    ap.add_argument("--out", type=Path, default=Path("runs/digit_images"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data, store, run = args.out / "data", args.out / "store.zarr", args.out / "cv"
    t = time.perf_counter()
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        write_cohort(data, args.size)
    cellbag("featurize", str(manifest), str(store), "--quiet")
    t_feat = time.perf_counter() - t
    cellbag(
        "cv", str(store), "--head", args.heads, "--folds", str(args.folds),
        "--repeats", str(args.repeats), "--no-clinical", "--cell-truth",
        str(data / "truth.csv"), "--out", str(run), "--quiet",
    )  # fmt: skip
    cellbag("index", str(store), "--quiet")
    comp = pd.read_csv(run / "comparison.csv")
    print(
        f"\n{len(pd.read_csv(data / 'clinical.csv'))} bags of real digits, "
        f"{args.folds}-fold x {args.repeats}, images only; featurize {t_feat:.0f} s, "
        f"total {time.perf_counter() - t:.0f} s"
    )
    print(f"{'head':<12} {'ROC AUC [95% CI]':<26} {'instance AUC (9s)':>18}")
    for _, r in comp.iterrows():
        truth = json.loads((run / r["head"] / "metrics.json").read_text()).get("cell_truth")
        inst = truth and truth.get("instance_auc")
        ci = f"{r['roc_auc']:.3f} [{r['roc_auc_ci95_low']:.3f}, {r['roc_auc_ci95_high']:.3f}]"
        print(f"{r['head']:<12} {ci:<26} {'' if inst is None else f'{inst:.3f}':>18}")
    pairs = pd.read_csv(run / "comparison_pairs.csv")
    pairs = pairs[(pairs["metric"] == "roc_auc") & (pairs["head_a"] == "meanpool")]
    if len(pairs):
        print("\nROC AUC, head - meanpool, paired over bags (95% bootstrap interval):")
        for _, r in pairs.iterrows():
            print(
                f"  {r['head_b']:<12} {-r['difference']:+.3f} "
                f"[{-r['ci95_high']:+.3f}, {-r['ci95_low']:+.3f}]  {r['verdict']}"
            )
    p9, p_all = retrieval_precision(store, data / "truth.csv")
    print(f"\nnearest 10 cells of other bags showing the same digit: 9s {p9:.3f}, all {p_all:.3f}")


def retrieval_precision(store: Path, truth: Path, k: int = 10) -> tuple[float, float]:
    """Mean share of the ``k`` nearest cells of other bags showing the query's digit, over
    the 9s and over every cell."""
    from sklearn.datasets import load_digits

    from cellbag.retrieval.query import Retriever
    from cellbag.store import Store

    target = load_digits().target
    digit = {c: target[int(c.split("img")[1][:4])] for c in pd.read_csv(truth)["cell_id"]}
    r = Retriever(Store.open(str(store)))
    hits = {}
    for c, d in digit.items():
        nn = r.query(cell_id=c, k=k, other_patients=True)
        hits[c] = float(np.mean([digit[n] == d for n in nn["cell_id"]]))
    nines = [h for c, h in hits.items() if digit[c] == 9]
    return float(np.mean(nines)), float(np.mean(list(hits.values())))


if __name__ == "__main__":
    main()
