"""abmil's ``base="mean"``: the bag-mean regression of meanpool, fitted first and held
fixed, with the attention model trained to correct it."""

import numpy as np
import pytest
import torch
from scipy import special
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from cellbag.aggregate import Head, make_head
from cellbag.aggregate.heads.abmil import ABMIL


def _bags(n=24, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    bags = [
        (rng.standard_normal((int(rng.integers(4, 12)), dim)) + 0.4 * y[i]).astype(np.float32)
        for i in range(n)
    ]
    return bags, y


def _mean_lr(bags, y, idx):
    """meanpool's regression on the bags ``idx``: (decision function of any bags)."""
    means = np.stack([bags[i].astype(np.float64).mean(0) for i in idx])
    mu, sd = means.mean(0), means.std(0)
    lr = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000)
    lr.fit((means - mu) / sd, y[idx])
    return lambda bs: (
        ((np.stack([b.mean(0) for b in bs]) - mu) / sd) @ lr.coef_[0] + (lr.intercept_[0])
    )


def test_untrained_correction_is_meanpool_and_out_of_fold_scores_come_from_other_bags():
    bags, y = _bags()
    head = make_head("abmil", clinical=False, base="mean", epochs=0, inner_folds=3).fit(bags, y)
    oof = special.logit(head.train_oof_proba_)  # the inner out-of-fold scores (fusion's)
    mean = make_head("meanpool", clinical=False).fit(bags, y)
    np.testing.assert_allclose(
        head.decision_function(bags), mean.decision_function(bags), rtol=1e-4, atol=1e-4
    )
    # each bag's out-of-fold score is the regression fitted without it
    skf = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    for tr, va in skf.split(np.zeros(len(y)), y):
        want = _mean_lr(bags, y, tr)([bags[i] for i in va])
        np.testing.assert_allclose(oof[va], want, rtol=1e-4, atol=1e-4)


def test_training_offsets_are_cross_fitted_on_the_models_own_bags():
    bags, y = _bags()
    head = make_head("abmil", clinical=False, base="mean")
    head._fit_input_map(np.concatenate(bags))
    head._fit_context(bags)
    xs = head._tensors(bags)
    tr = np.arange(18)
    module = head.build_module(head.in_dim_)
    offsets = head._prepare_module(module, xs, y, tr).numpy()
    assert np.all(offsets[18:] == 0)  # bags outside the model's training set: none
    mapped = [x.numpy() for x in xs]
    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    for a, b in skf.split(np.zeros(len(tr)), y[tr]):
        want = _mean_lr(mapped, y, tr[a])([mapped[i] for i in tr[b]])
        np.testing.assert_allclose(offsets[tr[b]], want, rtol=1e-4, atol=1e-4)
    # the untrained candidate is the base alone, and the module's own base (validation,
    # prediction) is the fit on all of ``tr``
    module.load_state_dict(head._start_candidate(module))
    x = torch.cat([xs[0]])[None]
    logit = module.eval()(x, torch.ones(1, len(xs[0]), dtype=torch.bool))[0]
    want0 = _mean_lr(mapped, y, tr)([mapped[0]])
    np.testing.assert_allclose(logit.detach().numpy(), want0, rtol=1e-4, atol=1e-4)


def test_base_head_learns_saves_loads_and_explains(tmp_path, saves_loads_and_explains):
    bags, y = _bags()
    head = make_head("abmil", clinical=False, base="mean", epochs=4, inner_folds=2).fit(bags, y)
    again = saves_loads_and_explains(head, bags, bags[3], tmp_path)
    assert again.base == "mean"


def test_unknown_base_is_refused():
    with pytest.raises(ValueError, match="base"):
        ABMIL(dim=5, hidden=4, attn_dim=3, dropout=0.0, base="max")


def test_a_folder_saved_before_base_loads_as_the_attention_model_alone(tmp_path):
    import json

    bags, y = _bags()
    plain = make_head("abmil", clinical=False, base=None, epochs=3, inner_folds=2).fit(bags, y)
    plain.save(tmp_path / "h")
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    del doc["params"]["base"], doc["params"]["base_C"]  # what an older cellbag wrote
    (tmp_path / "h" / "head.json").write_text(json.dumps(doc))
    again = Head.load(tmp_path / "h")
    assert again.base is None
    np.testing.assert_allclose(again.decision_function(bags), plain.decision_function(bags))
