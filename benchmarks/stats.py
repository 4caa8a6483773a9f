"""Statistics of a cv run: bootstrap speed and interval coverage, in one run.

1. Speed: every figure of 5 heads over 200 patients under 2,000 stratified bootstrap
   resamples (one matrix; AUC by ranks), plus the paired differences between heads.
2. Coverage: binormal scores with a known ROC AUC; the share of simulated cohorts whose
   95% bootstrap interval covers the true AUC (nominal 0.95), for a few sizes.

    python benchmarks/stats.py [--simulations 200]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
from scipy.stats import norm

from cellbag.evaluate.stats import evaluate, interval, resample_weights, weighted_auc


def speed(n: int = 200, heads: int = 5, repeats: int = 3, rounds: int = 5) -> float:
    """Best wall time of :func:`evaluate` on ``heads`` synthetic out-of-fold tables."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(int)
    oofs = {}
    for h in range(heads):
        rows = []
        for r in range(repeats):
            p = np.clip(0.5 + 0.2 * (2 * y - 1) + rng.normal(0, 0.25, n), 0, 1)
            rows.append(
                pd.DataFrame(
                    {
                        "patient_id": [f"P{i}" for i in range(n)],
                        "repeat": r,
                        "fold": np.arange(n) % 5,
                        "probability": p,
                        "label": y,
                        "youden_threshold": 0.5,
                        "triage_threshold": 0.3,
                    }
                )
            )
        oofs[f"h{h}"] = pd.concat(rows, ignore_index=True)
    best = math.inf
    for _ in range(rounds):
        t = time.perf_counter()
        evaluate(oofs, seed=0)
        best = min(best, time.perf_counter() - t)
    return best


def coverage(n_per_class: int, d: float, simulations: int, seed: int = 0) -> float:
    """Share of ``simulations`` cohorts whose 95% interval covers the true AUC."""
    true = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_per_class), np.ones(n_per_class)].astype(int)
    hits = 0
    for s in range(simulations):
        p = rng.normal(size=len(y)) + d * y
        lo, hi = interval(weighted_auc(p, y, resample_weights(y, 2000, s)))
        hits += lo <= true <= hi
    return hits / simulations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--simulations", type=int, default=200)
    args = ap.parse_args()
    s = speed()
    print(f"evaluate: 5 heads x 200 patients x 3 repeats, 2000 resamples + pairs: {s:.3f} s")
    print(f"coverage of the 95% ROC AUC interval ({args.simulations} cohorts each):")
    for n, d in ((20, 1.0), (40, 1.2), (80, 1.2), (40, 2.0)):
        true = norm.cdf(d / math.sqrt(2))
        c = coverage(n, d, args.simulations)
        print(f"  {n:3d} + {n:3d} patients, true AUC {true:.3f}: coverage {c:.3f}")


if __name__ == "__main__":
    main()
