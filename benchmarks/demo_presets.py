"""What the demo presets claim, measured: images vs clinical vs fused, attention vs mean.

For each preset and cohort seed: draw the cohort, featurize it with the offline default
encoder (a cohort whose parameters did not change is reused, store included), then
cross-validate (5-fold x 3 repeats) every head without and with clinical data and print
the pooled out-of-fold ROC AUC (mean over repeats ± half their range) of

- each image head without clinical data, the ``clinical`` head, each head with late fusion
  (``fusion`` and ``default``; the claim: fused >= max(image, clinical) + 0.03);
- the instance AUC of the attention heads' cell weights against the key cells, from
  ``cv --cell-truth`` (``rare-key`` and ``default``);

and paired differences with their 95% bootstrap interval over patients, as ``cellbag cv``
computes them (per-patient probabilities averaged over repeats; 2,000 stratified
resamples): fused - the better of image-only and clinical-only, and every attention head
- meanpool. With several ``--seeds`` the last lines give each difference averaged over
the cohorts, its interval from the same resamples (one bootstrap per cohort, averaged).

``default`` is drawn exactly as ``make demo`` draws it (40 patients of which a fifth are
held out as the test split, ~40 cells); the other presets at ``--patients`` x ``--cells``.

    python benchmarks/demo_presets.py [--presets fusion,rare-key,default] [--seeds 0,1,2]
        [--patients 80] [--cells 40] [--out runs/presets]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ATTENTION = ("abmil", "transformer")
#: (patients, cells per patient, test fraction) of the cohort ``make demo`` draws
DEMO_SIZE = (40, 40, 0.2)


def oof_table(head_dir: Path) -> pd.DataFrame:
    return pd.read_csv(head_dir / "oof_predictions.csv", dtype={"patient_id": str})


def repeat_auc(head_dir: Path) -> tuple[float, float]:
    """Mean and spread (half range) over repeats of the pooled out-of-fold AUC."""
    from sklearn.metrics import roc_auc_score

    oof = oof_table(head_dir)
    aucs = [roc_auc_score(g["label"], g["probability"]) for _, g in oof.groupby("repeat")]
    return float(np.mean(aucs)), float((max(aucs) - min(aucs)) / 2)


def patient_scores(head_dir: Path) -> pd.Series:
    """Per-patient probability averaged over repeats (what ``cellbag cv`` scores)."""
    oof = oof_table(head_dir)
    return oof.groupby("patient_id")["probability"].mean()


class Paired:
    """Bootstrap AUCs of one cohort's heads on shared stratified resamples."""

    def __init__(self, labels: pd.Series, seed: int = 0) -> None:
        from cellbag.aggregate.stats import resample_weights

        self.labels = labels.sort_index()
        self.w = resample_weights(self.labels.to_numpy(), seed=seed)
        self.boot: dict[str, np.ndarray] = {}
        self.point: dict[str, float] = {}

    def add(self, name: str, scores: pd.Series) -> None:
        from cellbag.aggregate.stats import weighted_auc

        s = scores.reindex(self.labels.index).to_numpy()
        y = self.labels.to_numpy()
        self.point[name] = float(weighted_auc(s, y, np.ones((1, len(y))))[0])
        self.boot[name] = weighted_auc(s, y, self.w)

    def diff(self, a: str, b: str) -> tuple[float, np.ndarray]:
        return self.point[a] - self.point[b], self.boot[a] - self.boot[b]


def show(label: str, point: float, boot: np.ndarray) -> str:
    from cellbag.aggregate.stats import interval

    lo, hi = interval(boot)
    verdict = "holds" if lo > 0 else "not shown"
    return f"{label} {point:+.3f} [{lo:+.3f}, {hi:+.3f}] ({verdict})"


def cohort(preset: str, seed: int, args: argparse.Namespace) -> tuple[Path, dict]:
    """The cohort's folder, drawn again only when its parameters changed."""
    from cellbag.data.demo import PRESETS, make_demo_cohort

    size = DEMO_SIZE if preset == "default" else (args.patients, args.cells, 0.0)
    spec = {"preset": preset, "config": PRESETS[preset], "size": size, "seed": seed}
    root = args.out / preset / f"seed{seed}"
    data = root / "data"
    stamp = root / "cohort.json"
    want = json.dumps(spec, sort_keys=True, default=str)
    if not stamp.is_file() or stamp.read_text() != want:
        import shutil

        before = json.loads(stamp.read_text()) if stamp.is_file() else None
        # same patients (size and seed), or a store put there by hand: keep the store,
        # featurize re-embeds the images that changed (and refuses another cohort's store)
        keep = before is None or (before["size"] == list(size) and before["seed"] == seed)
        for path in [data, root / "image", root / "fused"] + ([] if keep else [root]):
            shutil.rmtree(path, ignore_errors=True)
        make_demo_cohort(data, size[0], size[1], seed=seed, preset=preset, test_fraction=size[2])
        stamp.write_text(want)
    return root, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="fusion,rare-key,default")
    ap.add_argument("--seeds", default="0", help="cohort seeds (comma-separated)")
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--cells", type=int, default=40)
    ap.add_argument("--heads", default="meanpool,abmil,transformer,lgbm")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/presets"))
    args = ap.parse_args()

    import torch

    from cellbag.aggregate import run_cv
    from cellbag.featurize import run_featurize

    torch.set_num_threads(1)
    heads = [h for h in args.heads.split(",") if h]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for preset in [p for p in args.presets.split(",") if p]:
        fused_claim = preset != "rare-key"
        diffs: dict[str, list[tuple[float, np.ndarray]]] = {}
        for seed in seeds:
            t = time.perf_counter()
            root, spec = cohort(preset, seed, args)
            rep = run_featurize(root / "data", root / "store.zarr", progress=False, update=True)
            truth = root / "data" / "ground_truth.csv"
            common = dict(folds=args.folds, repeats=args.repeats, seed=seed, threads=1, quiet=True)
            run_cv(
                rep.store, rep.encoder_id, heads, root / "image", clinical=False,
                cell_truth=truth, **common,
            )  # fmt: skip
            n_pat, n_cells, _ = spec["size"]
            print(f"{preset}, cohort seed {seed}: {n_pat} patients x ~{n_cells} cells", flush=True)
            labels = oof_table(root / "image" / heads[0]).groupby("patient_id")["label"].first()
            paired = Paired(labels)
            for h in heads:
                paired.add(h, patient_scores(root / "image" / h))
            if fused_claim:
                run_cv(rep.store, rep.encoder_id, heads, root / "fused", clinical=True, **common)
                clin = repeat_auc(root / "fused" / "clinical")
                paired.add("clinical", patient_scores(root / "fused" / "clinical"))
                print(f"  clinical     AUC {clin[0]:.3f} ± {clin[1]:.3f}", flush=True)
            for h in heads:
                img = repeat_auc(root / "image" / h)
                line = f"  {h:<12} image {img[0]:.3f} ± {img[1]:.3f}"
                if fused_claim:
                    fu = repeat_auc(root / "fused" / h)
                    paired.add(f"{h}+clinical", patient_scores(root / "fused" / h))
                    line += f"  fused {fu[0]:.3f} ± {fu[1]:.3f}"
                    best = h if paired.point[h] >= paired.point["clinical"] else "clinical"
                    d = paired.diff(f"{h}+clinical", best)
                    diffs.setdefault(f"{h}: fused - max(image, clinical)", []).append(d)
                    line += "  " + show(f"fused - {'image' if best == h else 'clinical'}", *d)
                metrics = json.loads((root / "image" / h / "metrics.json").read_text())
                inst = (metrics.get("cell_truth") or {}).get("instance_auc")
                if inst is not None:
                    line += f"  instance AUC {inst:.3f}"
                print(line, flush=True)
            for h in [h for h in ATTENTION if h in heads and "meanpool" in heads]:
                d = paired.diff(h, "meanpool")
                diffs.setdefault(f"{h} - meanpool (image only)", []).append(d)
                print("  " + show(f"{h} - meanpool, image only:", *d), flush=True)
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
        if len(seeds) > 1:
            print(f"{preset}, averaged over cohort seeds {args.seeds}:", flush=True)
            for name, ds in diffs.items():
                point = float(np.mean([p for p, _ in ds]))
                boot = np.mean([b for _, b in ds], axis=0)
                per = ", ".join(f"{p:+.3f}" for p, _ in ds)
                print("  " + show(f"{name}:", point, boot) + f"  per seed {per}", flush=True)


if __name__ == "__main__":
    main()
