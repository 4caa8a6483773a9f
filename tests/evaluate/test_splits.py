import json

import numpy as np
import pytest

from cellbag.aggregate.errors import AggregateError
from cellbag.evaluate.splits import load_or_make_splits, make_splits

IDS = [f"P{i}" for i in range(30)]
Y = np.array([0] * 18 + [1] * 12)


def test_no_patient_in_two_folds_and_stratified():
    splits = make_splits(IDS, Y, folds=5, repeats=3, seed=0)
    assert len(splits) == 15
    for r in range(3):
        tests = [set(s["test"]) for s in splits if s["repeat"] == r]
        assert set().union(*tests) == set(IDS)
        assert sum(len(t) for t in tests) == len(IDS)  # disjoint
        for s in (s for s in splits if s["repeat"] == r):
            assert not set(s["train"]) & set(s["test"])
            assert len(s["train"]) + len(s["test"]) == len(IDS)
            pos = sum(Y[IDS.index(p)] for p in s["test"])
            assert pos in (2, 3)  # 12 positives over 5 folds
    # repeats differ
    assert splits[0]["test"] != splits[5]["test"]


def test_splits_written_once_and_reused(tmp_path):
    path = tmp_path / "splits.json"
    a = load_or_make_splits(path, IDS, Y, 3, 2, 0)
    mtime = path.stat().st_mtime_ns
    b = load_or_make_splits(path, IDS, Y, 3, 2, 0)
    assert a == b and path.stat().st_mtime_ns == mtime
    assert json.loads(path.read_text())["folds"] == 3
    with pytest.raises(AggregateError, match="splits.json: made for other settings"):
        load_or_make_splits(path, IDS, Y, 5, 2, 0)


def test_too_few_patients_per_class():
    with pytest.raises(AggregateError, match="use fewer --folds"):
        make_splits(IDS[:6], np.array([0, 0, 0, 0, 1, 1]), folds=3)
