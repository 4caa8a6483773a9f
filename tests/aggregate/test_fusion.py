"""Late fusion (issue 12, section 3) on small synthetic cohorts shaped like the ``fusion``
demo preset: images and clinical values each carry an independent, partial signal of about
the same strength, so the fused head must beat both; with clinical noise only, fusion must
cost (almost) nothing. The preset itself, on real images and the lite0 encoder, is measured
by ``benchmarks/demo_presets.py`` (80 patients: featurizing them takes minutes)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from cellbag.aggregate import Bags, make_head
from cellbag.aggregate.base import standardizer


def partial_cohort(n: int, seed: int, clinical_shift: float = 1.1, image_shift: float = 0.65):
    """Bags whose mean moves by ``image_shift`` along one direction when tumoral (with a
    per-bag nuisance along it), and clinical columns [informative, noise, noise]: two
    independent signals of about AUC 0.75-0.8 each (``clinical_shift`` 0: noise only)."""
    rng = np.random.default_rng(seed)
    dim = 16
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    y = rng.permutation(np.arange(n) % 2)
    bags = []
    for label in y:
        k = int(rng.integers(15, 25))
        x = rng.standard_normal((k, dim)) + (rng.normal(0, 0.45) + image_shift * label) * u
        bags.append(x.astype(np.float32))
    clin = rng.standard_normal((n, 3))
    clin[:, 0] += clinical_shift * y
    return bags, clin, y


def oof_aucs(head: str, bags, clin, y, seed: int, params: dict | None = None) -> dict[str, float]:
    """Out-of-fold AUC (5 folds) of the image-only head, the clinical head and the fused
    head; clinical columns standardised on each training fold, as `cellbag cv` does."""
    n = len(y)
    out = {k: np.zeros(n) for k in ("image", "clinical", "fused")}
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for k, (tr, te) in enumerate(folds.split(np.zeros(n), y)):
        mean, std = standardizer(clin[tr])
        x_tr = Bags([bags[i] for i in tr], (clin[tr] - mean) / std)
        x_te = Bags([bags[i] for i in te], (clin[te] - mean) / std)
        for kind, name, use in (
            ("image", head, False),
            ("fused", head, True),
            ("clinical", "clinical", True),
        ):
            model = make_head(
                name, clinical=use, seed=k, **((params or {}) if name == head else {})
            )
            out[kind][te] = model.fit(x_tr, y[tr]).predict_proba(x_te)[:, 1]
    return {k: roc_auc_score(y, p) for k, p in out.items()}


def test_fusion_beats_images_and_clinical_alone():
    gains = []
    for seed in range(3):
        bags, clin, y = partial_cohort(200, seed)
        a = oof_aucs("meanpool", bags, clin, y, seed)
        # each signal alone is partial, and of comparable strength
        assert 0.65 < a["image"] < 0.9 and 0.65 < a["clinical"] < 0.9, a
        gains.append(a["fused"] - max(a["image"], a["clinical"]))
    # the acceptance (fused >= max(image, clinical) + 0.03), on every seed
    assert min(gains) >= 0.03, gains


@pytest.mark.parametrize("head", ["abmil", "lgbm"])
def test_fusion_gain_holds_for_other_heads(head, fast):
    bags, clin, y = partial_cohort(160, 0)
    a = oof_aucs(head, bags, clin, y, 0, fast.get(head))
    assert a["fused"] >= max(a["image"], a["clinical"]) + 0.03, a


def test_fusion_with_uninformative_clinical_values_costs_little():
    for seed in range(3):
        bags, clin, y = partial_cohort(200, seed, clinical_shift=0.0)
        a = oof_aucs("meanpool", bags, clin, y, seed)
        assert a["clinical"] < 0.65, a
        assert a["fused"] >= a["image"] - 0.03, a
