import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cellbag.aggregate import AggregateError, Head, UnknownHeadError, list_heads, make_head

ALL = ["meanpool", "maxpool", "abmil", "transformer", "lgbm"]
QUICK = {"abmil": {"epochs": 5}, "transformer": {"epochs": 3}, "lgbm": {"n_estimators": 20}}


def _data(n=24, dim=8, seed=0, sizes=(5, 15)):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    bags = [
        (rng.standard_normal((rng.integers(*sizes), dim)) + 0.8 * y[i]).astype(np.float32)
        for i in range(n)
    ]
    clin = rng.standard_normal((n, 3)).astype(np.float32)
    return bags, clin, y


def test_registry_lists_all_heads():
    assert set(ALL) <= set(list_heads())
    with pytest.raises(UnknownHeadError, match="unknown head 'nope'"):
        make_head("nope")


@pytest.mark.parametrize("name", ALL)
def test_fit_predict_save_load(name, tmp_path):
    bags, clin, y = _data()
    head = make_head(name, clinical=True, seed=0, **QUICK.get(name, {}))
    p = head.fit(bags, clin, y).predict_proba(bags, clin)
    assert p.shape == (len(bags),) and np.all((p >= 0) & (p <= 1))
    assert roc_auc_score(y, p) > 0.7  # learns the easy shift on its training data
    head.save(tmp_path / name)
    files = {f.name for f in (tmp_path / name).iterdir()}
    assert {"head.json", "head.safetensors"} <= files
    assert not any(f.endswith((".pkl", ".pickle", ".pt")) for f in files)
    again = Head.load(tmp_path / name)
    np.testing.assert_allclose(again.predict_proba(bags, clin), p, rtol=1e-6, atol=1e-7)
    if head.has_cell_weights:
        w = again.cell_weights(bags[:3], clin[:3])
        assert [len(x) for x in w] == [len(b) for b in bags[:3]]
        assert all(abs(x.sum() - 1) < 1e-5 for x in w)


@pytest.mark.parametrize("name", ["abmil", "transformer"])
def test_same_seed_same_model(name):
    bags, clin, y = _data()
    p1 = make_head(name, seed=3, **QUICK[name]).fit(bags, clin, y).predict_proba(bags, clin)
    p2 = make_head(name, seed=3, **QUICK[name]).fit(bags, clin, y).predict_proba(bags, clin)
    np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("name", ["abmil", "transformer"])
def test_attention_depends_on_the_other_cells(name):
    bags, clin, y = _data()
    head = make_head(name, clinical=False, **QUICK[name]).fit(bags, None, y)
    bag = bags[0].copy()
    changed = bag.copy()
    changed[1:] = changed[1:] * -3.0 + 2.0  # every cell but the first
    w0 = head.cell_weights([bag])[0][0]
    w1 = head.cell_weights([changed])[0][0]
    assert abs(w0 - w1) > 1e-4  # cell 0's weight moved although cell 0 did not change
    assert head.predict_proba([bag])[0] != head.predict_proba([changed])[0]


@pytest.mark.parametrize("name", ["abmil", "transformer", "meanpool", "lgbm"])
def test_permutation_invariant(name):
    bags, clin, y = _data()
    head = make_head(name, **QUICK.get(name, {})).fit(bags, clin, y)
    perm = [b[::-1].copy() for b in bags]
    np.testing.assert_allclose(
        head.predict_proba(perm, clin), head.predict_proba(bags, clin), atol=1e-5
    )


@pytest.mark.parametrize("name", ALL)
def test_bags_of_one_and_five_thousand_cells(name):
    bags, clin, y = _data(n=12)
    rng = np.random.default_rng(1)
    bags[0] = bags[0][:1]
    bags[1] = rng.standard_normal((5000, 8)).astype(np.float32) + 0.8
    head = make_head(name, **QUICK.get(name, {})).fit(bags, clin, y)
    p = head.predict_proba(bags[:2], clin[:2])
    assert np.isfinite(p).all()
    if head.has_cell_weights:
        w = head.cell_weights(bags[:2], clin[:2])
        assert w[0].tolist() == pytest.approx([1.0])
        assert len(w[1]) == 5000 and w[1].sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", ["abmil", "meanpool", "lgbm"])
def test_clinical_fusion_is_used_or_ignored(name):
    bags, clin, y = _data()
    clin[:, 0] = y * 3.0  # a strong clinical signal
    with_c = make_head(name, clinical=True, **QUICK.get(name, {})).fit(bags, clin, y)
    flipped = clin.copy()
    flipped[:, 0] = (1 - y) * 3.0
    assert not np.allclose(with_c.predict_proba(bags, clin), with_c.predict_proba(bags, flipped))
    without = make_head(name, clinical=False, **QUICK.get(name, {})).fit(bags, clin, y)
    np.testing.assert_array_equal(
        without.predict_proba(bags, clin), without.predict_proba(bags, flipped)
    )


def test_bad_inputs_are_clear_errors():
    bags, clin, y = _data()
    head = make_head("meanpool")
    with pytest.raises(AggregateError, match=r"bags\[2\]: empty bag"):
        head.fit(bags[:2] + [np.zeros((0, 8), np.float32)] + bags[3:], clin, y)
    with pytest.raises(AggregateError, match="width 4 differs"):
        head.fit(bags[:1] + [np.zeros((3, 4), np.float32)] + bags[2:], clin, y)
    with pytest.raises(AggregateError, match="both classes"):
        head.fit(bags, clin, np.zeros(len(bags), int))
    with pytest.raises(AggregateError, match="call fit"):
        head.predict_proba(bags, clin)
    head.fit(bags, clin, y)
    with pytest.raises(AggregateError, match="2 columns, the head was fitted with 3"):
        head.predict_proba(bags, np.zeros((len(bags), 2)))
    with pytest.raises(AggregateError, match="no per-cell weights"):
        head.cell_weights(bags, clin)


def test_abmil_beats_meanpool_and_finds_the_witnesses(witness):
    tr, te = np.arange(100), np.arange(100, 160)
    train = [witness.bags[i] for i in tr]
    test = [witness.bags[i] for i in te]
    mean = make_head("meanpool", clinical=False).fit(train, None, witness.y[tr])
    abmil = make_head("abmil", clinical=False, seed=0).fit(train, None, witness.y[tr])
    auc_mean = roc_auc_score(witness.y[te], mean.predict_proba(test))
    auc_abmil = roc_auc_score(witness.y[te], abmil.predict_proba(test))
    assert auc_abmil > auc_mean + 0.15, (auc_abmil, auc_mean)
    weights = abmil.cell_weights(test)
    hits = [
        np.isin(np.argsort(-w)[:3], np.flatnonzero(witness.witness[i])).mean()
        for w, i in zip(weights, te, strict=True)
        if witness.y[i]
    ]
    assert np.mean(hits) > 0.5  # chance: 3 witnesses of 40 cells -> 0.075
