"""maxpool's smooth maximum (``pool="lme"``, the default) against the hard maximum."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from cellbag.aggregate import AggregateError, Head, make_head
from cellbag.core.mil import masked_logmeanexp, masked_max, pad_bags


def _witness_bags(n=80, dim=50, seed=0, shift=2.0):
    """Bags of 1-39 cells whatever their label; a positive bag's first tenth of cells (at
    least one) is shifted by ``shift`` along 3 of ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    bags = []
    for label in y:
        m = int(rng.integers(1, 40))
        b = rng.standard_normal((m, dim)).astype(np.float32)
        if label:
            b[: max(1, m // 10), :3] += shift
        bags.append(b)
    return bags, y


def _oof_auc(bags, y, **params):
    p = np.zeros(len(y))
    for tr, te in StratifiedKFold(4, shuffle=True, random_state=0).split(bags, y):
        head = make_head("maxpool", clinical=False, seed=0, **params)
        head.fit([bags[i] for i in tr], y[tr])
        p[te] = head.decision_function([bags[i] for i in te])
    return roc_auc_score(y, p)


def test_logmeanexp_lies_between_mean_and_max_and_ignores_bag_size():
    s = torch.tensor([[0.0, 1.0, 5.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    lme = masked_logmeanexp(s, mask)
    assert 2.0 < float(lme[0]) < 5.0  # mean of the real scores 2, max 5
    assert float(lme[1]) == pytest.approx(2.0)  # n equal scores pool to that score
    x, m = pad_bags([torch.full((1,), 2.0), torch.full((30,), 2.0)])
    np.testing.assert_allclose(masked_logmeanexp(x, m).numpy(), [2.0, 2.0], rtol=1e-6)
    assert float(masked_max(s, mask)[0]) == 5.0


def test_smooth_maximum_finds_witness_cells_the_hard_maximum_misses():
    """With bag sizes independent of the label, the hard maximum of n noisy scores grows
    with n and its gradient reaches one cell per bag; the smooth maximum learns the key
    cells. Seeds 0-3 of this cohort: lme 0.86-0.94, max 0.75-0.86 out-of-fold AUC, the
    smooth maximum ahead by 0.07-0.12 on each (seed 0: 0.897 against 0.774)."""
    bags, y = _witness_bags()
    lme = _oof_auc(bags, y)
    hard = _oof_auc(bags, y, pool="max")
    assert lme >= 0.8 and lme >= hard + 0.05, (lme, hard)


def test_unknown_pool_is_refused():
    bags, y = _witness_bags(n=8)
    with pytest.raises(AggregateError, match="pool must be one of lme, max"):
        make_head("maxpool", clinical=False, pool="mean").fit(bags, y)


def test_maxpool_saved_before_pool_existed_loads_as_the_hard_maximum(tmp_path):
    bags, y = _witness_bags(n=16)
    head = make_head("maxpool", clinical=False, pool="max", epochs=2, inner_folds=2)
    head.fit(bags, y).save(tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "head.json").read_text())
    del doc["params"]["pool"]
    del doc["meta"]["pool"]
    (tmp_path / "old" / "head.json").write_text(json.dumps(doc))
    again = Head.load(tmp_path / "old")
    assert again.pool == "max"
    np.testing.assert_allclose(again.predict_proba(bags), head.predict_proba(bags), rtol=1e-5)
    # and a current folder keeps its smooth maximum
    new = make_head("maxpool", clinical=False, epochs=2, inner_folds=2).fit(bags, y)
    new.save(tmp_path / "new")
    assert Head.load(tmp_path / "new").pool == "lme"
