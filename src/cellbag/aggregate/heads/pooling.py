"""Mean / max pooling of the cells followed by an L2-regularised logistic regression."""

from __future__ import annotations

import numpy as np

from cellbag.aggregate.base import Head, standardizer
from cellbag.aggregate.registry import register_head


class _PooledLogistic(Head):
    """Pool each bag to one vector, concatenate clinical features, standardise (training
    statistics) and fit a class-balanced logistic regression."""

    def __init__(self, clinical: bool = True, seed: int = 0, C: float = 0.1) -> None:
        super().__init__(clinical=clinical, seed=seed)
        self.C = C

    def _pool(self, bags: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _features(self, bags, clinical) -> np.ndarray:
        x = np.concatenate([self._pool(bags), clinical], axis=1)
        return (x - self.mean_) / self.std_

    def _fit(self, bags, clinical, y) -> None:
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate([self._pool(bags), clinical], axis=1)
        self.mean_, self.std_ = standardizer(x)
        model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=5000)
        model.fit((x - self.mean_) / self.std_, y)
        self.coef_ = model.coef_[0].astype(np.float64)
        self.intercept_ = float(model.intercept_[0])

    def _predict(self, bags, clinical) -> np.ndarray:
        z = self._features(bags, clinical) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

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

    def _cell_contributions(self, bags, clinical):
        # the linear head applied to each cell: the bag's image logit is their sum
        d = self.dim_
        w = self.coef_[:d] / self.std_[:d]
        return [((b - self.mean_[:d]) @ w) / len(b) for b in bags]


@register_head("maxpool")
class MaxPoolHead(_PooledLogistic):
    """Per-dimension max of the cell embeddings -> logistic regression."""

    contribution_kind = "argmax"

    def _pool(self, bags):
        return np.stack([b.max(axis=0) for b in bags])

    def _cell_contributions(self, bags, clinical):
        # each pooled dimension's logit term goes to the cell that holds its maximum
        d = self.dim_
        term = [(b.max(axis=0) - self.mean_[:d]) / self.std_[:d] * self.coef_[:d] for b in bags]
        return [
            np.bincount(b.argmax(axis=0), weights=t, minlength=len(b))
            for b, t in zip(bags, term, strict=True)
        ]
