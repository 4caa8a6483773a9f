"""LightGBM on bag statistics (training-fold PCA + k-means); clinical features by late fusion."""

from __future__ import annotations

import os

import numpy as np

from cellbag.aggregate.base import FUSION_FOLDS, Head
from cellbag.aggregate.features import BagStats
from cellbag.aggregate.registry import register_head


def default_threads() -> int:
    """Threads for LightGBM: the cores this process may use (at most 8)."""
    # only used when a head asks for num_threads=0
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


@register_head("lgbm")
class LGBMHead(Head):
    """Gradient-boosted trees on per-bag statistics. The PCA (``n_components``) and the
    k-means (``n_clusters``) that define the statistics are fitted on the training bags
    only. ``num_threads`` is explicit and 1 by default: a cohort's table has a few hundred
    rows, where one thread is fastest, and OpenMP threads of LightGBM spinning against
    torch's (or another process's) on a small machine made a fit ~10x slower in our
    measurements (0 = all the cores this process may use)."""

    def __init__(
        self,
        clinical: bool = True,
        seed: int = 0,
        n_components: int = 16,
        n_clusters: int = 8,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 5,
        num_threads: int = 1,
    ) -> None:
        super().__init__(clinical=clinical, seed=seed)
        self.n_components = n_components
        self.n_clusters = n_clusters
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.num_threads = num_threads

    def _params(self, y: np.ndarray) -> dict:
        n_pos = float(y.sum())
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": 0.5,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "scale_pos_weight": (len(y) - n_pos) / max(n_pos, 1.0),
            "num_threads": self.num_threads or default_threads(),
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }

    def _booster(self, x: np.ndarray, y: np.ndarray):
        import lightgbm as lgb

        data = lgb.Dataset(x, label=y, feature_name=self.stats_.feature_names())
        return lgb.train(self._params(y), data, num_boost_round=self.n_estimators)

    def _fit(self, bags, y) -> np.ndarray | None:
        self.stats_ = BagStats(self.n_components, self.n_clusters, seed=self.seed).fit(bags)
        x = self.stats_.transform(bags)
        self.booster_ = self._booster(x, y)
        # out-of-fold scores (late fusion, nested thresholds): boosters on inner folds of the
        # same table (the PCA/k-means are label-free: shared instead of refitted 5 times)
        from sklearn.model_selection import StratifiedKFold

        k = int(min(FUSION_FOLDS, np.bincount(y).min()))
        if k < 2:
            return self._decision(bags)
        oof = np.zeros(len(y))
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        for tr, te in skf.split(x, y):
            oof[te] = self._raw(self._booster(x[tr], y[tr]), x[te])
        return oof

    def _raw(self, booster, table: np.ndarray) -> np.ndarray:
        """The booster's log-odds of the rows of a bag-statistics table."""
        return booster.predict(
            table, raw_score=True, num_threads=self.num_threads or default_threads()
        )

    def _decision(self, bags) -> np.ndarray:
        return self._raw(self.booster_, self.stats_.transform(bags))

    def _loo_decisions(self, bag):
        # what an ensemble's occlusion asks of its members: the exact leave-one-out table
        # in one pass, one predict
        return self._raw(self.booster_, self.stats_.loo_transform(bag))

    contribution_kind = "cluster gain"

    def _cell_contributions(self, bags):
        # each cell scores the share of the trees' gain carried by its cluster's fraction
        names = self.booster_.feature_name()
        gain = dict(zip(names, self.booster_.feature_importance("gain"), strict=True))
        k = len(self.stats_.centers_)
        g = np.array([gain.get(f"cluster{j}_frac", 0.0) for j in range(k)], dtype=np.float64)
        g = g / g.sum() if g.sum() > 0 else g
        return [g[self.stats_.assign(self.stats_.project(b))] for b in bags]

    def _get_state(self):
        return {}, self.stats_.state(), {"lgbm_model.txt": self.booster_.model_to_string()}

    def _set_state(self, meta, arrays, texts):
        import lightgbm as lgb

        self.stats_ = BagStats(self.n_components, self.n_clusters, seed=self.seed).set_state(arrays)
        self.booster_ = lgb.Booster(model_str=texts["lgbm_model.txt"])
