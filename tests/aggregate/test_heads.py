import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from cellbag.aggregate import AggregateError, Bags, Head, UnknownHeadError, list_heads, make_head

ALL = ["meanpool", "maxpool", "abmil", "transformer", "lgbm", "svm", "ensemble"]
QUICK = {
    "abmil": {"epochs": 5, "inner_folds": 2},
    "transformer": {"epochs": 3, "inner_folds": 2},
    "maxpool": {"epochs": 5, "inner_folds": 2},
    "lgbm": {"n_estimators": 20},
    "ensemble": {"members": ("meanpool", "svm", "lgbm")},
}


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
    assert set(ALL) | {"clinical"} <= set(list_heads())
    with pytest.raises(UnknownHeadError, match="unknown head 'nope'"):
        make_head("nope")


@pytest.mark.parametrize("name", ALL)
def test_fit_predict_save_load(name, tmp_path):
    bags, clin, y = _data()
    x = Bags(bags, clin)
    head = make_head(name, clinical=True, seed=0, **QUICK.get(name, {}))
    proba = head.fit(x, y).predict_proba(x)
    assert proba.shape == (len(bags), 2) and np.allclose(proba.sum(1), 1)
    p = proba[:, 1]
    assert head.classes_.tolist() == [0, 1]
    assert (head.predict(x) == (p >= 0.5)).all()
    assert roc_auc_score(y, p) > 0.7  # learns the easy shift on its training data
    head.save(tmp_path / name)
    files = {f.name for f in (tmp_path / name).iterdir()}
    assert {"head.json", "head.safetensors"} <= files
    assert not any(f.endswith((".pkl", ".pickle", ".pt")) for f in files)
    again = Head.load(tmp_path / name)
    np.testing.assert_allclose(again.predict_proba(x), proba, rtol=1e-6, atol=1e-7)
    if head.has_cell_weights:
        w = again.cell_weights(x[:3])
        assert [len(v) for v in w] == [len(b) for b in bags[:3]]
        assert all(abs(v.sum() - 1) < 1e-5 for v in w)


def test_neural_heads_take_several_steps_per_epoch_on_small_cohorts(monkeypatch):
    """The default batch is about an eighth of a model's training bags (4 to 32), so the
    ~16-bag inner models of a 30-patient cohort take 4 steps per epoch, not one."""
    from torch import optim

    from cellbag.aggregate.torch_head import auto_batch_size

    assert [auto_batch_size(n) for n in (3, 16, 43, 107, 256, 1000)] == [4, 4, 6, 14, 32, 32]
    steps = []
    real_step = optim.AdamW.step
    monkeypatch.setattr(
        optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1]
    )
    bags, _, y = _data(n=24)
    make_head("abmil", clinical=False, epochs=1, inner_folds=2).fit(bags, y)
    assert len(steps) == 2 * 3  # 2 inner models x 12 bags in batches of 4
    steps.clear()
    make_head("abmil", clinical=False, epochs=1, inner_folds=2, batch_size=32).fit(bags, y)
    assert len(steps) == 2


def test_neural_input_map_is_diagonal_without_pca_and_old_folders_load(tmp_path):
    """Without PCA the standardisation is kept as a vector, not a (d, d) matrix; a head
    folder saved with the matrix (before) loads and decides the same."""
    from safetensors.numpy import load_file, save_file

    bags, clin, y = _data()
    head = make_head("abmil", clinical=False, **QUICK["abmil"]).fit(bags, y)
    assert head.input_weight_ is None and head.input_scale_.shape == (bags[0].shape[1],)
    np.testing.assert_array_equal(
        head._map(bags[0]), bags[0] @ np.diag(head.input_scale_) + head.input_bias_
    )
    head.save(tmp_path / "h")
    arrays = load_file(tmp_path / "h" / "head.safetensors")
    arrays["input_weight"] = np.diag(arrays.pop("input_scale"))
    save_file(arrays, tmp_path / "h" / "head.safetensors")
    again = Head.load(tmp_path / "h")
    assert again.input_scale_ is None and again.input_weight_.shape == (8, 8)
    np.testing.assert_allclose(again.decision_function(bags), head.decision_function(bags))
    pca = make_head("abmil", clinical=False, pca_dim=3, **QUICK["abmil"]).fit(bags, y)
    assert pca.input_weight_.shape == (8, 3) and pca.in_dim_ == 3
    pca.save(tmp_path / "p")
    np.testing.assert_allclose(
        Head.load(tmp_path / "p").decision_function(bags), pca.decision_function(bags)
    )


@pytest.mark.parametrize("name", ["abmil", "transformer"])
def test_same_seed_same_model(name):
    bags, clin, y = _data()
    x = Bags(bags, clin)
    p1 = make_head(name, seed=3, **QUICK[name]).fit(x, y).predict_proba(x)
    p2 = make_head(name, seed=3, **QUICK[name]).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("name", ["abmil", "transformer", "maxpool"])
def test_attention_depends_on_the_other_cells(name):
    bags, _, y = _data()
    head = make_head(name, clinical=False, **QUICK[name]).fit(bags, y)
    bag = bags[0].copy()
    changed = bag.copy()
    changed[1:] = changed[1:] * -3.0 + 2.0  # every cell but the first
    w0 = head.cell_weights([bag])[0][0]
    w1 = head.cell_weights([changed])[0][0]
    assert abs(w0 - w1) > 1e-4  # cell 0's weight moved although cell 0 did not change
    assert head.predict_proba([bag])[0, 1] != head.predict_proba([changed])[0, 1]


@pytest.mark.parametrize("name", ["abmil", "transformer", "meanpool", "lgbm", "svm", "ensemble"])
def test_permutation_invariant(name):
    bags, clin, y = _data()
    head = make_head(name, **QUICK.get(name, {})).fit(Bags(bags, clin), y)
    perm = [b[::-1].copy() for b in bags]
    np.testing.assert_allclose(
        head.predict_proba(Bags(perm, clin)), head.predict_proba(Bags(bags, clin)), atol=1e-5
    )


@pytest.mark.parametrize("name", ALL)
def test_bags_of_one_and_five_thousand_cells(name):
    bags, clin, y = _data(n=12)
    rng = np.random.default_rng(1)
    bags[0] = bags[0][:1]
    bags[1] = rng.standard_normal((5000, 8)).astype(np.float32) + 0.8
    head = make_head(name, **QUICK.get(name, {})).fit(Bags(bags, clin), y)
    p = head.predict_proba(Bags(bags[:2], clin[:2]))
    assert np.isfinite(p).all()
    if head.has_cell_weights:
        w = head.cell_weights(bags[:2])
        assert w[0].tolist() == pytest.approx([1.0])
        assert len(w[1]) == 5000 and w[1].sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", ["abmil", "meanpool", "lgbm", "clinical"])
def test_clinical_fusion_is_used_or_ignored(name):
    bags, clin, y = _data()
    clin[:, 0] = y * 3.0  # a strong clinical signal
    with_c = make_head(name, clinical=True, **QUICK.get(name, {})).fit(Bags(bags, clin), y)
    flipped = clin.copy()
    flipped[:, 0] = (1 - y) * 3.0
    a, b = with_c.predict_proba(Bags(bags, clin)), with_c.predict_proba(Bags(bags, flipped))
    assert not np.allclose(a, b)
    if name == "clinical":
        return
    without = make_head(name, clinical=False, **QUICK.get(name, {})).fit(Bags(bags, clin), y)
    np.testing.assert_array_equal(
        without.predict_proba(Bags(bags, clin)), without.predict_proba(Bags(bags, flipped))
    )
    # the image model of a fused head is the image-only model: attention stays image-driven
    if with_c.has_cell_weights:
        np.testing.assert_allclose(
            with_c.cell_weights(bags[:2])[0], without.cell_weights(bags[:2])[0], rtol=1e-5
        )


def test_bad_inputs_are_clear_errors():
    bags, clin, y = _data()
    head = make_head("meanpool")
    with pytest.raises(AggregateError, match=r"bags\[2\]: empty bag"):
        head.fit(bags[:2] + [np.zeros((0, 8), np.float32)] + bags[3:], y)
    with pytest.raises(AggregateError, match="width 4 differs"):
        head.fit(bags[:1] + [np.zeros((3, 4), np.float32)] + bags[2:], y)
    with pytest.raises(AggregateError, match="both classes"):
        head.fit(bags, np.zeros(len(bags), int))
    with pytest.raises(AggregateError, match="Only binary classification is supported"):
        head.fit(bags, np.arange(len(bags)) % 3)
    with pytest.raises(AggregateError, match="6 rows for 24 bags"):
        Bags(bags, clin[:6])
    with pytest.raises(AggregateError, match="call fit"):
        head.predict_proba(Bags(bags, clin))
    head.fit(Bags(bags, clin), y)
    with pytest.raises(AggregateError, match="2 columns, the head was fitted with 3"):
        head.predict_proba(Bags(bags, np.zeros((len(bags), 2))))
    with pytest.raises(AggregateError, match="fitted with 3 clinical columns"):
        head.predict_proba(bags)
    with pytest.raises(AggregateError, match="no per-cell weights"):
        head.cell_weights(bags)
    with pytest.raises(AggregateError, match="needs clinical features"):
        make_head("clinical").fit(bags, y)


def test_string_labels_and_classes():
    bags, _, y = _data()
    labels = np.where(y == 1, "tumoral", "reactive")
    head = make_head("meanpool").fit(bags, labels)
    assert head.classes_.tolist() == ["reactive", "tumoral"]
    assert set(head.predict(bags)) <= {"reactive", "tumoral"}
    assert head.score(bags, labels) > 0.7


# -- scikit-learn contract ------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL + ["clinical"])
def test_clone_and_params(name):
    head = make_head(name, seed=5)
    params = head.get_params(deep=True)
    assert params["seed"] == 5 and params == clone(head).get_params()
    twin = clone(head).set_params(seed=7)
    assert twin.get_params()["seed"] == 7 and head.seed == 5


def test_cross_val_score_and_grid_search_on_a_list_of_bags():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

    bags, clin, y = _data(n=30)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(make_head("meanpool"), bags, y, cv=cv, scoring="roc_auc")
    assert scores.shape == (3,) and scores.mean() > 0.7
    grid = GridSearchCV(make_head("meanpool"), {"C": [0.01, 1.0]}, cv=cv).fit(bags, y)
    assert grid.best_params_["C"] in (0.01, 1.0)
    assert grid.predict_proba(bags).shape == (30, 2)
    # a Bags container keeps its clinical rows aligned through sklearn's slicing
    x = Bags(bags, clin)
    scores = cross_val_score(make_head("clinical"), x, y, cv=cv)
    assert scores.shape == (3,)
    sub = x[np.array([3, 1])]
    assert isinstance(sub, Bags) and sub.clinical.tolist() == clin[[3, 1]].tolist()


def test_pipeline_step_on_a_list_of_bags():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    bags, _, y = _data()
    centre = FunctionTransformer(lambda xs: [b - b.mean(0) * 0.5 for b in xs])
    pipe = make_pipeline(centre, make_head("meanpool")).fit(bags, y)
    assert pipe.predict_proba(bags).shape == (len(bags), 2)
    assert clone(pipe).get_params()["meanpoolhead__C"] == 0.1


def test_abmil_beats_meanpool_and_finds_the_witnesses(witness):
    tr, te = np.arange(100), np.arange(100, 160)
    train = [witness.bags[i] for i in tr]
    test = [witness.bags[i] for i in te]
    mean = make_head("meanpool", clinical=False).fit(train, witness.y[tr])
    abmil = make_head("abmil", clinical=False, seed=0).fit(train, witness.y[tr])
    auc_mean = roc_auc_score(witness.y[te], mean.predict_proba(test)[:, 1])
    auc_abmil = roc_auc_score(witness.y[te], abmil.predict_proba(test)[:, 1])
    assert auc_abmil > auc_mean + 0.15, (auc_abmil, auc_mean)
    weights = abmil.cell_weights(test)
    hits = [
        np.isin(np.argsort(-w)[:3], np.flatnonzero(witness.witness[i])).mean()
        for w, i in zip(weights, te, strict=True)
        if witness.y[i]
    ]
    assert np.mean(hits) > 0.5  # chance: 3 witnesses of 40 cells -> 0.075
