"""LightGBM on bag statistics (training-fold PCA + k-means) and clinical features."""

from __future__ import annotations

import os

import numpy as np

from cellbag.aggregate.base import Head
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

    def _table(self, bags, clinical) -> np.ndarray:
        return np.concatenate([self.stats_.transform(bags), clinical], axis=1)

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

    def _fit(self, bags, clinical, y) -> None:
        import lightgbm as lgb

        self.stats_ = BagStats(self.n_components, self.n_clusters, seed=self.seed).fit(bags)
        x = self._table(bags, clinical)
        names = self.stats_.feature_names() + [f"clinical{i}" for i in range(clinical.shape[1])]
        data = lgb.Dataset(x, label=y, feature_name=names, free_raw_data=True)
        self.booster_ = lgb.train(self._params(y), data, num_boost_round=self.n_estimators)

    def _predict(self, bags, clinical) -> np.ndarray:
        return self.booster_.predict(
            self._table(bags, clinical), num_threads=self.num_threads or default_threads()
        )

    contribution_kind = "cluster gain"

    def _cell_contributions(self, bags, clinical):
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
