"""What the demo presets claim, measured: images vs clinical vs fused, attention vs mean.

For each preset and cohort seed: draw the cohort, featurize it with the offline default
encoder (a cohort whose parameters did not change is reused, store included), then
cross-validate (5-fold x 3 repeats) every head without and, for ``fusion`` and
``default``, with clinical data; print the ROC AUC of the out-of-fold probabilities
averaged over repeats per patient (the figure ``cellbag cv`` reports; beside it the half
range of the per-repeat AUCs) of each image-only head, the ``clinical`` head and each fused
head, the instance AUC of the attention heads' cell weights against the key cells (``cv
--cell-truth``), and paired differences with their 95% bootstrap interval over patients
(2,000 stratified resamples, as ``cellbag cv`` compares heads): fused - image,
fused - max(image, clinical) (the claim of ``fusion``: >= +0.03), and abmil / transformer
- meanpool on images only (the claim of ``rare-key``: >= +0.1). With several ``--seeds``
the last lines average each difference over the cohorts, its interval from the same
resamples (one bootstrap per cohort, averaged), with each cohort's value.

``default`` is drawn exactly as ``make demo`` draws it (60 patients of which a fifth are
held out as the test split, ~40 cells); the other presets at ``--patients`` x ``--cells``.

    python benchmarks/demo_presets.py [--presets fusion,rare-key,default] [--seeds 0,1,2]
        [--patients 80] [--cells 40] [--out runs/presets] [--crop 1] [--stain none]

Without ``--crop`` / ``--stain`` featurize takes its defaults (``auto``: on these smear
crops the centre 0.57 and Reinhard's colours) and the cv runs go to ``image`` and ``fused``;
given, featurize takes them (``--crop 1 --stain none``: the whole image as read), the store
keeps both encoders, and the runs go to ``image-ENCODER_ID`` and ``fused-ENCODER_ID`` on the
same cohorts and splits, so ``benchmarks/lymphocytosis_levers.py compare`` pairs them.
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
#: patients and cells per patient of the cohort ``make demo`` draws (a fifth held out)
DEMO_SIZE = "60x40"


def oof_table(head_dir: Path) -> pd.DataFrame:
    return pd.read_csv(head_dir / "oof_predictions.csv", dtype={"patient_id": str})


def repeat_auc(head_dir: Path) -> tuple[float, float]:
    """Mean and spread (half range) over repeats of the pooled out-of-fold AUC."""
    from sklearn.metrics import roc_auc_score

    oof = oof_table(head_dir)
    aucs = [roc_auc_score(g["label"], g["probability"]) for _, g in oof.groupby("repeat")]
    return float(np.mean(aucs)), float((max(aucs) - min(aucs)) / 2)


def instance_auc(head_dir: Path, truth: Path, labels: pd.Series) -> float | None:
    """The instance AUC of a head's out-of-fold cell weights for the key cells (what
    ``cv --cell-truth`` writes into metrics.json); None for heads without weights."""
    from cellbag.evaluate.celltruth import head_instance_auc, read_cell_truth

    res = head_instance_auc(head_dir, read_cell_truth(truth), labels.to_dict())
    return None if res is None else res["instance_auc"]


def patient_scores(head_dir: Path) -> pd.Series:
    """Per-patient probability averaged over repeats (what ``cellbag cv`` scores)."""
    oof = oof_table(head_dir)
    return oof.groupby("patient_id")["probability"].mean()


class Paired:
    """Bootstrap AUCs of one cohort's heads on shared stratified resamples."""

    def __init__(self, labels: pd.Series, seed: int = 0) -> None:
        from cellbag.evaluate.stats import resample_weights

        self.labels = labels.sort_index()
        self.w = resample_weights(self.labels.to_numpy(), seed=seed)
        self.boot: dict[str, np.ndarray] = {}
        self.point: dict[str, float] = {}

    def add(self, name: str, head_dir: Path) -> str:
        """Add a head's run; returns its AUC and the half range of its per-repeat AUCs."""
        from cellbag.evaluate.stats import weighted_auc

        s = patient_scores(head_dir).reindex(self.labels.index).to_numpy()
        y = self.labels.to_numpy()
        self.point[name] = float(weighted_auc(s, y, np.ones((1, len(y))))[0])
        self.boot[name] = weighted_auc(s, y, self.w)
        return f"{self.point[name]:.3f} (repeats ±{repeat_auc(head_dir)[1]:.3f})"

    def diff(self, a: str, b: str) -> tuple[float, np.ndarray]:
        return self.point[a] - self.point[b], self.boot[a] - self.boot[b]


def show(label: str, point: float, boot: np.ndarray) -> str:
    from cellbag.evaluate.stats import interval

    lo, hi = interval(boot)
    verdict = "holds" if lo > 0 else "not shown"
    return f"{label} {point:+.3f} [{lo:+.3f}, {hi:+.3f}] ({verdict})"


def cohort(preset: str, seed: int, args: argparse.Namespace) -> tuple[Path, dict]:
    """The cohort's folder, drawn again only when its parameters changed."""
    from cellbag.data.demo import PRESETS, make_demo_cohort

    size = (*args.demo_size, 0.2) if preset == "default" else (args.patients, args.cells, 0.0)
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
        stale = [p for p in root.glob("image*") if p.is_dir()] + list(root.glob("fused*"))
        for path in [data, *stale] + ([] if keep else [root]):
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
    ap.add_argument("--heads", default="meanpool,abmil,transformer,lgbm,svm,ensemble")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/presets"))
    ap.add_argument(
        "--demo-size",
        default=DEMO_SIZE,
        type=lambda v: tuple(int(x) for x in v.split("x")),
        help="PATIENTSxCELLS of the default preset (as `cellbag demo` draws it)",
    )
    ap.add_argument("--crop", default=None, help="featurize --crop (default: auto)")
    ap.add_argument("--stain", default=None, help="featurize --stain (default: auto)")
    ap.add_argument(
        "--reuse", action="store_true", help="reuse the heads' cv runs already in --out"
    )
    args = ap.parse_args()

    import torch

    from cellbag.evaluate import run_cv
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
            rep = run_featurize(
                root / "data", root / "store.zarr", crop=args.crop or "auto",
                stain=args.stain or "auto",
                progress=False, update=True,
            )  # fmt: skip
            tag = "" if args.crop is None and args.stain is None else f"-{rep.encoder_id}"
            truth = root / "data" / "ground_truth.csv"
            common = dict(folds=args.folds, repeats=args.repeats, seed=seed, threads=1, quiet=True)
            runs = [("image" + tag, False)] + ([("fused" + tag, True)] if fused_claim else [])
            for folder, clinical in runs:
                have = {h for h in heads if (root / folder / h / "oof_predictions.csv").is_file()}
                todo = [h for h in heads if not (args.reuse and h in have)]
                if todo:
                    run_cv(
                        rep.store, rep.encoder_id, todo, root / folder, clinical=clinical,
                        cell_truth=truth, **common,
                    )  # fmt: skip
            n_pat, n_cells, _ = spec["size"]
            print(f"{preset}, cohort seed {seed}: {n_pat} patients x ~{n_cells} cells", flush=True)
            labels = (
                oof_table(root / f"image{tag}" / heads[0]).groupby("patient_id")["label"].first()
            )
            paired = Paired(labels)

            if fused_claim:
                print(
                    f"  clinical     AUC {paired.add('clinical', root / f'fused{tag}' / 'clinical')}"
                )
            for h in heads:
                line = f"  {h:<12} image {paired.add(h, root / f'image{tag}' / h)}"
                if fused_claim:
                    line += f"  fused {paired.add(h + '+clinical', root / f'fused{tag}' / h)}"
                inst = instance_auc(root / f"image{tag}" / h, truth, labels)
                if inst is not None:
                    line += f"  instance AUC {inst:.3f}"
                print(line, flush=True)
                if fused_claim:
                    d = paired.diff(f"{h}+clinical", h)
                    diffs.setdefault(f"{h}: fused - image", []).append(d)
                    line = "    " + show("fused - image", *d)
                    best = h if paired.point[h] >= paired.point["clinical"] else "clinical"
                    d = paired.diff(f"{h}+clinical", best)
                    diffs.setdefault(f"{h}: fused - max(image, clinical)", []).append(d)
                    print(line + "; " + show(f"fused - {best} (the better alone)", *d))
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
