"""Cheap levers of issue 30 §3 on cached embeddings: probe heads, and paired comparisons.

    python benchmarks/lymphocytosis_levers.py run STORE ENCODER OUT HEADS {images|fused}
    python benchmarks/lymphocytosis_levers.py compare BASE=RUN/HEAD NAME=RUN/HEAD ...

``run`` cross-validates ``HEADS`` (comma-separated: built-in heads or the probe heads
below) exactly as ``cellbag cv --folds 5 --repeats 3 --seed 0 --jobs 1`` does (the same
splits, fold seeds, inner folds and thresholds), so its runs pair with ``cellbag cv`` runs
of the same store. ``compare`` prints each run's ROC AUC and balanced accuracy with their
95% bootstrap intervals, the paired difference to ``BASE`` on the same 2,000 resamples
(seed 0), the triage figures, and the reactive patients a cut chosen in hindsight on
the same scores would spare (a bound on any threshold rule, not a result). The probe heads (not part of cellbag):

- ``{meanpool,svm,lgbm}_bag{z,scale,center}``: each patient's cells standardised by its
  own bag before the head: ``(x - m) / s``, ``x / s`` or ``x - m`` (``m``, ``s`` the bag's
  per-dimension mean and spread);
- ``{meanpool,svm,lgbm,abmil}_experts``: late fusion as a product of experts: the image
  log-odds and a clinical logistic regression, each Platt-scaled (unpenalised) on
  out-of-fold scores of the training bags, summed;
- ``{meanpool,svm}_early``: the clinical values (standardised on the training bags) as
  extra cell features, so the bag mean carries them into the one image model;
  ``lgbm_early``: appended to lgbm's bag-statistics table.

Never commit its output: it is derived from patient images (docs/real-cohort.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from cellbag.aggregate.base import (
    FUSION_FOLDS,
    as_bags,
    blas_single_thread,
    check_bags,
    check_clinical,
    check_labels,
    standardizer,
)
from cellbag.aggregate.heads.abmil import ABMILHead
from cellbag.aggregate.heads.lgbm import LGBMHead
from cellbag.aggregate.heads.pooling import MeanPoolHead
from cellbag.aggregate.heads.svm import KernelSVMHead
from cellbag.aggregate.registry import register_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lymphocytosis import hindsight_spared, triage_target  # noqa: E402

BASES = {"meanpool": MeanPoolHead, "svm": KernelSVMHead, "lgbm": LGBMHead}


# -- per-bag standardisation ------------------------------------------------------------
def bag_standardised(bags: list[np.ndarray], mode: str) -> list[np.ndarray]:
    out = []
    for b in bags:
        m, s = b.mean(0, keepdims=True), b.std(0, keepdims=True) + 1e-3
        x = {"z": (b - m) / s, "scale": b / s, "center": b - m}[mode]
        out.append(x.astype(np.float32))
    return out


def bagnorm_head(base: type, mode: str) -> type:
    class BagNorm(base):
        def _fit(self, bags, y):
            return super()._fit(bag_standardised(bags, mode), y)

        def _decision(self, bags):
            return super()._decision(bag_standardised(bags, mode))

    return BagNorm


# -- late fusion as a product of calibrated experts -------------------------------------
def _platt(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    m = LogisticRegression(C=1e4, class_weight="balanced", max_iter=5000).fit(s[:, None], y)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


class ExpertFusion:
    def fit(self, z, c, y, seed: int = 0) -> ExpertFusion:
        self.img_ = _platt(np.asarray(z, float), y)
        self.cm_, self.cs_ = standardizer(np.asarray(c, np.float64))
        cz = (c - self.cm_) / self.cs_
        k = int(min(FUSION_FOLDS, np.bincount(y).min()))
        oof = np.zeros(len(y))
        lr = lambda: LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)  # noqa: E731
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(cz, y):
            oof[te] = lr().fit(cz[tr], y[tr]).decision_function(cz[te])
        self.clin_, self.cplatt_ = lr().fit(cz, y), _platt(oof, y)
        return self

    def decision(self, z, c) -> np.ndarray:
        zc = self.clin_.decision_function((c - self.cm_) / self.cs_)
        a, b = self.img_
        g, d = self.cplatt_
        return a * np.asarray(z, float) + b + g * zc + d


def experts_head(base: type) -> type:
    class Experts(base):
        def fit(self, X, y):
            bags, clin = as_bags(X)
            bags = check_bags(bags)
            use = bool(self.clinical) and clin is not None and clin.shape[1] > 0
            c = check_clinical(clin if use else None, len(bags))
            self.classes_, labels = check_labels(y, len(bags))
            self.dim_, self.n_clinical_ = int(bags[0].shape[1]), int(c.shape[1])
            with blas_single_thread():
                oof = self._fit(bags, labels)
                if self.n_clinical_:
                    if oof is None:
                        oof = self._inner_oof(bags, labels)
                    self.fusion_ = ExpertFusion().fit(oof, c, labels)
                    oof = self.fusion_.decision(oof, c)
            if oof is not None:
                self.train_oof_proba_ = 1.0 / (1.0 + np.exp(-oof))
            return self

    return Experts


# -- clinical values given to the image model --------------------------------------------
class _Early:
    def fit(self, X, y):
        bags, clin = as_bags(X)
        self.n_extra_ = clin.shape[1] if (self.clinical and clin is not None) else 0
        if self.n_extra_:
            self.cm_, self.cs_ = standardizer(np.asarray(clin, np.float64))
        return super().fit(self._widen(bags, clin), y)  # a plain list: no fusion stage

    def _widen(self, bags, clin):
        if not self.n_extra_:
            return list(bags)
        cz = ((clin - self.cm_) / self.cs_).astype(np.float32)
        return [np.hstack([b, np.repeat(cz[i : i + 1], len(b), 0)]) for i, b in enumerate(bags)]

    def decision_function(self, X):
        bags, clin = as_bags(X)
        return super().decision_function(self._widen(bags, clin))


class LGBMEarly(LGBMHead):
    def fit(self, X, y):
        bags, clin = as_bags(X)
        self._c = None if (clin is None or not self.clinical) else np.asarray(clin, np.float32)
        keep, self.clinical = self.clinical, False
        try:
            super().fit(bags, y)
        finally:
            self.clinical = keep
        return self

    def _table(self, bags, c):
        x = self.stats_.transform(bags)
        return x if c is None else np.hstack([x, c])

    def _fit(self, bags, y):
        import lightgbm as lgb

        from cellbag.aggregate.features import BagStats

        self.stats_ = BagStats(self.n_components, self.n_clusters, seed=self.seed).fit(bags)
        x = self._table(bags, self._c)
        names = self.stats_.feature_names()
        names += [f"clinical{i}" for i in range(0 if self._c is None else self._c.shape[1])]

        def booster(xx, yy):
            data = lgb.Dataset(xx, label=yy, feature_name=names)
            return lgb.train(self._params(yy), data, num_boost_round=self.n_estimators)

        self.booster_ = booster(x, y)
        k = int(min(FUSION_FOLDS, np.bincount(y).min()))
        oof = np.zeros(len(y))
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=self.seed).split(x, y):
            oof[te] = self._raw(booster(x[tr], y[tr]), x[te])
        return oof

    def decision_function(self, X):
        bags, clin = as_bags(X)
        c = None if (clin is None or not self.clinical) else np.asarray(clin, np.float32)
        with blas_single_thread():
            return self._raw(self.booster_, self._table(check_bags(bags), c))


def register_probes() -> None:
    for name, base in BASES.items():
        for mode in ("z", "scale", "center"):
            register_head(f"{name}_bag{mode}")(bagnorm_head(base, mode))
        register_head(f"{name}_experts")(experts_head(base))
    register_head("abmil_experts")(experts_head(ABMILHead))
    for name in ("meanpool", "svm"):
        register_head(f"{name}_early")(type(f"{name}Early", (_Early, BASES[name]), {}))
    register_head("lgbm_early")(LGBMEarly)


# -- commands ------------------------------------------------------------------------------
def run(store: str, encoder: str, out: str, heads: str, what: str) -> None:
    from cellbag.aggregate.bags import load_bags
    from cellbag.evaluate.cv import cross_validate

    register_probes()
    data = load_bags(store, encoder, split="train")
    cross_validate(data, heads, out, clinical=what == "fused", jobs=1, quiet=True)


def compare(specs: list[str]) -> None:
    from cellbag.evaluate.stats import (
        evaluate,
        paired_difference,
        patient_metrics,
        patient_table,
        resample_weights,
    )

    oofs = {}
    for s in specs:
        name, path = s.split("=", 1)
        oofs[name] = pd.read_csv(Path(path) / "oof_predictions.csv", dtype={"patient_id": str})
    base = next(iter(oofs))
    per_head, _ = evaluate(oofs, seed=0)
    tables = {h: patient_table(o) for h, o in oofs.items()}
    y = tables[base]["label"].to_numpy()
    w = resample_weights(y, 2000, 0)
    figs = {}
    for h, t in tables.items():
        calls = {c[: -len("call")]: t[c].to_numpy() for c in t.columns if c.endswith("call")}
        p = t["probability"].to_numpy()
        figs[h] = (patient_metrics(y, p, calls), patient_metrics(y, p, calls, w))

    def fig(m, k):
        return f"{m[k]['value']:.3f} [{m[k]['ci95_low']:.3f}, {m[k]['ci95_high']:.3f}]"

    def delta(h, k):
        if h == base:
            return "—"
        d = paired_difference(
            figs[h][0][k][0], figs[base][0][k][0], figs[h][1][k], figs[base][1][k]
        )
        return f"{d['difference']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]"

    def tri(m, k):  # a run without nested thresholds (a probe) has no triage figures
        v = m.get(k, {}).get("value")
        return "—" if v is None or v != v else f"{v:.3f}"

    print(
        f"| run | ROC AUC | BA | Δ ROC AUC vs {base} | Δ BA | triage sensitivity | spared "
        "| spared by a cut in hindsight |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for h, s in zip(oofs, specs, strict=True):
        m = per_head[h]["metrics"]
        c = hindsight_spared(oofs[h], triage_target(Path(s.split("=", 1)[1]).parent))
        print(
            f"| {h} | {fig(m, 'roc_auc')} | {fig(m, 'balanced_accuracy')} | "
            f"{delta(h, 'roc_auc')} | {delta(h, 'balanced_accuracy')} | "
            f"{tri(m, 'triage_sensitivity')} | {tri(m, 'triage_spared')} | "
            f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}] |"
        )


if __name__ == "__main__":
    if len(sys.argv) >= 7 and sys.argv[1] == "run":
        run(*sys.argv[2:7])
    elif len(sys.argv) >= 3 and sys.argv[1] == "compare":
        compare(sys.argv[2:])
    else:
        sys.exit(__doc__)
