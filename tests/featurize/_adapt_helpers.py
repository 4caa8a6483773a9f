"""Shared, cached test data for the adaptation tests (MAE, adapters, fine-tuning)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

_ROOT = Path(tempfile.mkdtemp(prefix="cellbag-adapt-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def demo_cohort(patients: int = 12, cells: int = 10, seed: int = 0) -> Path:
    """A demo cohort (challenge layout), generated once per session: the ``fusion`` preset,
    whose slides share one stain (the default preset gives each patient its own stain
    shift, which a few dozen steps of a tiny MAE do not learn)."""
    from cellbag.data.demo import make_demo_cohort

    root = _ROOT / f"demo-{patients}-{cells}-{seed}"
    return make_demo_cohort(root, patients, cells, seed, preset="fusion")


@functools.cache
def witness_cohort(
    patients: int = 16, cells: int = 24, witness: float = 0.7, seed: int = 0
) -> Path:
    """Demo cells in a cohort whose tumoral bags are mostly witness cells.

    The demo cohort's tumoral bags hold 15-45% witness cells, so the best possible
    instance-level balanced accuracy is ~0.6 and a probe on random features already
    comes close. Here tumoral bags hold ``witness`` of small-mature / smudge cells, so
    instance labels carry a signal that fine-tuning can learn beyond a frozen probe.
    All patients are in the training split.
    """
    from cellbag.data.demo import render_cell

    rng = np.random.default_rng(seed)
    out = _ROOT / f"witness-{patients}-{cells}-{witness}-{seed}"
    rows = []
    labels = np.array([1, 0] * (patients // 2) + [1] * (patients % 2))
    for i, y in enumerate(labels):
        pid = f"P{i + 1}"
        folder = out / "trainset" / pid
        folder.mkdir(parents=True)
        if y == 1:
            probs = {"normal": 1 - witness, "small_mature": witness * 0.7, "smudge": witness * 0.3}
        else:
            probs = {"normal": 0.5, "activated": 0.5}
        types = rng.choice(list(probs), size=cells, p=list(probs.values()))
        for j, t in enumerate(types):
            render_cell(str(t), rng).save(folder / f"{j:04d}.jpg", quality=92)
        rows.append(
            {"ID": pid, "LABEL": int(y), "GENDER": "M", "DOB": "1/1/1950", "LYMPH_COUNT": 5.0}
        )
    pd.DataFrame(rows).to_csv(out / "trainset" / "trainset_true.csv", index=False)
    return out
