"""Mean pooling of the cells followed by an L2-regularised logistic regression."""

from __future__ import annotations

import numpy as np

from cellbag.aggregate.base import Head, standardizer
from cellbag.aggregate.registry import register_head


class _PooledLogistic(Head):
    """Pool each bag to one vector, standardise (training statistics) and fit a
    class-balanced logistic regression."""

    def __init__(self, clinical: bool = True, seed: int = 0, C: float = 0.1) -> None:
        super().__init__(clinical=clinical, seed=seed)
        self.C = C

    def _pool(self, bags: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, bags, y) -> None:
        from sklearn.linear_model import LogisticRegression

        x = self._pool(bags)
        self.mean_, self.std_ = standardizer(x)
        model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=5000)
        model.fit((x - self.mean_) / self.std_, y)
        self.coef_ = model.coef_[0].astype(np.float64)
        self.intercept_ = float(model.intercept_[0])

    def _decision(self, bags) -> np.ndarray:
        return ((self._pool(bags) - self.mean_) / self.std_) @ self.coef_ + self.intercept_

    def _get_state(self):
        arrays = {"mean": self.mean_, "std": self.std_, "coef": self.coef_}
        return {"intercept": self.intercept_}, arrays, {}

    def _set_state(self, meta, arrays, texts):
        self.mean_, self.std_, self.coef_ = arrays["mean"], arrays["std"], arrays["coef"]
        self.intercept_ = float(meta["intercept"])


@register_head("meanpool")
class MeanPoolHead(_PooledLogistic):
    """Mean of the cell embeddings -> logistic regression."""

    contribution_kind = "logit"

    def _pool(self, bags):
        return np.stack([b.mean(axis=0) for b in bags])

    def _cell_contributions(self, bags):
        # the linear head applied to each cell: the bag's image logit is their sum (+ bias)
        w = self.coef_ / self.std_
        return [((b - self.mean_) @ w) / len(b) for b in bags]

    def _loo_decisions(self, bag):
        loo = (bag.sum(axis=0, dtype=np.float64)[None, :] - bag) / (len(bag) - 1)
        return ((loo - self.mean_) / self.std_) @ self.coef_ + self.intercept_
