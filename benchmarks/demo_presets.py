"""What the demo presets claim, measured: images vs clinical vs fused, attention vs mean.

For each preset: draw the cohort, featurize it with the offline default encoder, then
cross-validate (5-fold x 3 repeats) and print the pooled out-of-fold ROC AUC (mean over
repeats, with the spread over repeats) of

- ``fusion`` (and ``default``): each image head without clinical data, the ``clinical``
  head, and each head with late fusion; the claim is fused >= max(image, clinical) + 0.03;
- ``rare-key``: every head without clinical data and the instance AUC of the attention
  heads' cell weights against the key cells; the claim is abmil and transformer beat
  meanpool by >= 0.1.

    python benchmarks/demo_presets.py [--presets fusion,rare-key,default]
        [--patients 80] [--cells 40] [--out runs/presets]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd


def oof_auc(head_dir: Path) -> tuple[float, float]:
    """Mean and spread (min-max half range) over repeats of the pooled out-of-fold AUC."""
    from sklearn.metrics import roc_auc_score

    oof = pd.read_csv(head_dir / "oof_predictions.csv")
    aucs = [roc_auc_score(g["label"], g["probability"]) for _, g in oof.groupby("repeat")]
    return float(np.mean(aucs)), float((max(aucs) - min(aucs)) / 2)


def instance_auc(head_dir: Path, truth: pd.DataFrame) -> float:
    """ROC AUC of the cell weights (times bag size) for the key cells of tumoral bags."""
    from sklearn.metrics import roc_auc_score

    att = pd.read_csv(head_dir / "attention.csv")
    att = att.merge(truth[["cell_id", "is_key", "label"]], on="cell_id")
    att = att[att["label"] == 1]
    rel = att["weight"] * att.groupby(["patient_id", "repeat"])["weight"].transform("size")
    return float(roc_auc_score(att["is_key"], rel))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="fusion,rare-key,default")
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--cells", type=int, default=40)
    ap.add_argument("--heads", default="meanpool,abmil,transformer,lgbm")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/presets"))
    args = ap.parse_args()

    import torch

    from cellbag.aggregate import run_cv
    from cellbag.data.demo import make_demo_cohort
    from cellbag.featurize import run_featurize

    torch.set_num_threads(1)
    heads = [h for h in args.heads.split(",") if h]
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for preset in [p for p in args.presets.split(",") if p]:
        t = time.perf_counter()
        root = args.out / preset
        data = root / "data"
        if not (data / "ground_truth.csv").is_file():
            make_demo_cohort(
                data, args.patients, args.cells, seed=0, preset=preset, test_fraction=0
            )
        rep = run_featurize(data, root / "store.zarr", progress=False)
        truth = pd.read_csv(data / "ground_truth.csv")
        common = dict(folds=args.folds, repeats=args.repeats, seed=0, threads=1, quiet=True)
        run_cv(rep.store, rep.encoder_id, heads, root / "image", clinical=False, **common)
        print(f"{preset}: {args.patients} patients x ~{args.cells} cells", flush=True)
        img = {h: oof_auc(root / "image" / h) for h in heads}
        if preset == "rare-key":
            for h in heads:
                line = f"  {h:<12} image AUC {img[h][0]:.3f} ± {img[h][1]:.3f}"
                if (root / "image" / h / "attention.csv").is_file():
                    line += f"  instance AUC {instance_auc(root / 'image' / h, truth):.3f}"
                print(line, flush=True)
        else:
            run_cv(rep.store, rep.encoder_id, heads, root / "fused", clinical=True, **common)
            clin = oof_auc(root / "fused" / "clinical")
            print(f"  clinical     AUC {clin[0]:.3f} ± {clin[1]:.3f}", flush=True)
            for h in heads:
                fu = oof_auc(root / "fused" / h)
                gain = fu[0] - max(img[h][0], clin[0])
                print(
                    f"  {h:<12} image {img[h][0]:.3f} ± {img[h][1]:.3f}"
                    f"  fused {fu[0]:.3f} ± {fu[1]:.3f}  fused - max(image, clinical) {gain:+.3f}",
                    flush=True,
                )
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
