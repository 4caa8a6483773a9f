"""The kernel SVM head and the ensemble head: what they add beyond the shared head contract
(fit/predict/save/load, clone, permutation invariance, bag sizes: tests/aggregate/test_heads.py)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cellbag.aggregate import AggregateError, Bags, Head, make_head


def _witness_bags(n=40, dim=6, seed=0):
    """Tumoral bags hold a few shifted 'witness' cells among normal ones."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    bags, key = [], []
    for i in range(n):
        b = rng.standard_normal((12, dim)).astype(np.float32)
        k = np.zeros(12, bool)
        if y[i]:
            k[:3] = True
            b[:3, 0] += 4.0
        bags.append(b)
        key.append(k)
    return bags, y, key


@pytest.mark.parametrize(
    "name,params", [("svm", {}), ("ensemble", {"members": ("meanpool", "svm")})]
)
def test_occlusion_ranks_the_witness_cells_first(name, params):
    bags, y, key = _witness_bags()
    head = make_head(name, clinical=False, **params).fit(bags, y)
    assert head.contribution_kind == "occlusion"
    contrib = head.cell_contributions(bags)
    assert [len(c) for c in contrib] == [len(b) for b in bags]
    pos = [i for i in range(len(bags)) if y[i]]
    # within tumoral bags, the witness cells pull harder towards tumoral than the others
    auc = roc_auc_score(
        np.concatenate([key[i] for i in pos]), np.concatenate([contrib[i] for i in pos])
    )
    assert auc > 0.9, auc


def test_svm_occlusion_is_the_drop_without_the_cell():
    bags, y, _ = _witness_bags()
    head = make_head("svm", clinical=False).fit(bags, y)
    b = bags[1]
    c = head.cell_contributions([b])[0]
    full = head.decision_function([b])[0]
    without = head.decision_function([np.delete(b, 2, axis=0)])[0]
    assert c[2] == pytest.approx(full - without, abs=1e-6)


def test_svm_probabilities_are_calibrated_on_held_out_margins():
    bags, y, _ = _witness_bags(n=60)
    head = make_head("svm", clinical=False).fit(bags, y)
    # out-of-fold probabilities of the training bags come from the inner k-fold
    oof = head.train_oof_proba_
    assert oof.shape == (60,) and 0.0 < oof.min() and oof.max() < 1.0
    assert ((oof >= 0.5) == y).mean() >= 0.8
    in_sample = head.predict_proba(bags)[:, 1]
    assert np.abs(in_sample - oof).max() > 0.05  # not the final model's own scores


def test_ensemble_saves_every_member_and_reloads(tmp_path):
    bags, y, _ = _witness_bags()
    clin = np.random.default_rng(3).standard_normal((len(bags), 2)).astype(np.float32)
    x = Bags(bags, clin)
    head = make_head("ensemble", members=("meanpool", "lgbm", "svm")).fit(x, y)
    assert len(head.members_) == 3 and head.scales_.shape == (3,)
    head.save(tmp_path / "e")
    names = {f.name for f in (tmp_path / "e").iterdir()}
    assert "m1.lgbm_model.txt" in names
    again = Head.load(tmp_path / "e")
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), rtol=1e-6)


def test_stack_weights_follow_the_informative_member_and_are_never_negative():
    from cellbag.aggregate.heads.ensemble import stack_weights

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    signal = 2.0 * y - 1.0 + 0.8 * rng.standard_normal(80)
    votes = np.stack([signal, rng.standard_normal(80), -signal])  # good, noise, inverted
    votes /= votes.std(axis=1, keepdims=True)
    w = stack_weights(votes, y, C=1.0)
    assert w.min() >= 0 and np.isclose(w.sum(), 1.0)
    assert w[0] > 0.8 and w[2] == 0.0, w
    # no member helps: the equal vote
    flat = stack_weights(np.zeros((3, 80)), y, C=1.0)
    np.testing.assert_allclose(flat, 1 / 3)


def test_ensemble_weighs_members_and_old_folders_vote_equally(tmp_path):
    """The stacking weights are saved; a folder saved before them (no ``weights``) loads as
    the equal vote it was."""
    from safetensors.numpy import load_file, save_file

    bags, y, _ = _witness_bags()
    head = make_head("ensemble", clinical=False, members=("meanpool", "svm")).fit(bags, y)
    assert head.weights_.shape == (2,) and head.weights_.min() >= 0
    assert np.isclose(head.weights_.sum(), 1.0)
    head.save(tmp_path / "e")
    arrays = load_file(tmp_path / "e" / "head.safetensors")
    del arrays["weights"]
    save_file(arrays, tmp_path / "e" / "head.safetensors")
    old = Head.load(tmp_path / "e")
    np.testing.assert_allclose(old.weights_, 0.5)
    votes = [
        m.decision_function(bags) / s for m, s in zip(head.members_, head.scales_, strict=True)
    ]
    expected = head.platt_.decision(np.mean(votes, axis=0))
    np.testing.assert_allclose(old.decision_function(bags), expected, rtol=1e-6)


@pytest.mark.parametrize("members", [(), ("ensemble",), ("clinical",)])
def test_ensemble_rejects_bad_members(members):
    bags, y, _ = _witness_bags(n=12)
    with pytest.raises(AggregateError, match="ensemble"):
        make_head("ensemble", clinical=False, members=members).fit(bags, y)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("meanpool", {}),
        ("svm", {}),
        ("abmil", {"epochs": 5, "inner_folds": 2}),  # with the bag context (default)
        ("abmil", {"epochs": 5, "inner_folds": 2, "context": False}),
    ],
)
def test_fast_leave_one_out_equals_refitting_nothing(name, params):
    """The heads' exact leave-one-out shortcuts give the decisions of the smaller bags."""
    from cellbag.aggregate.base import Head as Base

    bags, y, _ = _witness_bags()
    head = make_head(name, clinical=False, **params).fit(bags, y)
    rng = np.random.default_rng(1)
    # a bag of more than 64 cells: abmil's context form works 64 left-out cells at a time
    b = np.concatenate([bags[3], bags[5] + 0.1 * rng.normal(size=bags[5].shape)] * 4)
    b = b.astype(np.float32)
    assert len(b) > 64
    fast = head._loo_decisions(b)
    slow = Base._loo_decisions(head, b)  # the generic form: decide on each smaller bag
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5)


def test_abmil_leave_one_out_of_a_large_bag_is_linearised_closely(monkeypatch):
    """Beyond ``LOO_EXACT_MAX_CELLS`` abmil's leave-one-out (what an ensemble's occlusion
    asks) is linearised in the bag-mean shift: O(n) instead of O(n^2), off by O(1/n^2)."""
    from cellbag.aggregate.base import Head as Base
    from cellbag.aggregate.heads import abmil

    bags, y, _ = _witness_bags()
    head = make_head("abmil", clinical=False, epochs=5, inner_folds=2).fit(bags, y)
    rng = np.random.default_rng(2)
    b = np.concatenate([bags[3], bags[5] + 0.1 * rng.normal(size=bags[5].shape)] * 12)
    b = b.astype(np.float32)
    monkeypatch.setattr(abmil, "LOO_EXACT_MAX_CELLS", 64)
    assert len(b) > 64

    def exact_form(*args, **kwargs):
        raise AssertionError("the exact O(n^2) form ran on a large bag")

    monkeypatch.setattr(abmil.ABMIL, "_leave_one_out_context", exact_form)
    fast = head._loo_decisions(b)
    slow = Base._loo_decisions(head, b)  # the generic form: decide on each smaller bag
    full = float(head._decision([b])[0])
    spread = np.std(full - slow)
    assert spread > 0
    assert np.abs(fast - slow).max() <= 0.05 * spread
    # The cell the fast form ranks first weighs as much as the top cell of the exact form
    # (a value, not an index: the bag repeats its cells, so several cells tie).
    top = np.max(full - slow)
    assert (full - slow)[np.argmax(full - fast)] >= top - 0.05 * spread


def test_cv_recomputes_an_ensemble_when_a_member_default_changes(tmp_path, monkeypatch):
    """Finished folds are reused only under the same settings; an ensemble's settings
    include its members' own, so a changed member default (a new cellbag version) is not
    answered from stale folds."""
    import pandas as pd

    from cellbag.aggregate.heads.svm import KernelSVMHead
    from cellbag.aggregate.synthetic import witness_store
    from cellbag.evaluate import run_cv

    store, enc, _ = witness_store(str(tmp_path / "s.zarr"), 24, 0, 10, 8, seed=0)
    common = dict(
        clinical=False, folds=2, repeats=1, quiet=True, jobs=1,  # the patch is in this process
        head_params={"ensemble": {"members": ("meanpool", "svm")}},
    )  # fmt: skip
    out = tmp_path / "run"
    run_cv(store, enc, "ensemble", out, **common)
    first = pd.read_csv(out / "ensemble" / "oof_predictions.csv")["probability"]
    run_cv(store, enc, "ensemble", out, **common)  # same settings: the folds are reused
    again = pd.read_csv(out / "ensemble" / "oof_predictions.csv")["probability"]
    np.testing.assert_array_equal(first, again)
    defaults = KernelSVMHead.__init__.__defaults__
    monkeypatch.setattr(
        KernelSVMHead.__init__, "__defaults__", (*defaults[:2], (1e-3,), *defaults[3:])
    )
    run_cv(store, enc, "ensemble", out, **common)
    changed = pd.read_csv(out / "ensemble" / "oof_predictions.csv")["probability"]
    assert not np.allclose(first, changed)


def test_svm_chooses_its_kernel_width_inside_the_training_fold():
    """Bag means on a checkerboard need a narrow kernel: the in-fold choice finds it and
    scores held-out bags far above the former fixed width; a fixed ``gamma_scale`` is
    used as given, and ties (every width separates the bags) keep 1.0."""
    from sklearn.metrics import roc_auc_score

    from cellbag.aggregate.heads.svm import KernelSVMHead

    rng = np.random.default_rng(0)

    def draw(n):
        c = rng.uniform(-2, 2, (n, 2))
        y = (np.sin(2.5 * c[:, 0]) * np.sin(2.5 * c[:, 1]) > 0).astype(int)
        return [ci + 0.05 * rng.standard_normal((6, 2)) for ci in c], y

    bags, y = draw(120)
    test_bags, test_y = draw(200)
    auto = KernelSVMHead(clinical=False).fit(bags, y)
    fixed = KernelSVMHead(clinical=False, gamma_scale=1.0).fit(bags, y)
    assert auto.gamma_scale_ > 1.0 and fixed.gamma_scale_ == 1.0
    auc_auto = roc_auc_score(test_y, auto.decision_function(test_bags))
    auc_fixed = roc_auc_score(test_y, fixed.decision_function(test_bags))
    assert auc_auto > auc_fixed + 0.1, (auc_auto, auc_fixed)
    easy = [np.full((3, 2), float(v)) + 0.01 * rng.standard_normal((3, 2)) for v in (0, 5) * 10]
    assert KernelSVMHead(clinical=False).fit(easy, np.array([0, 1] * 10)).gamma_scale_ == 1.0
