"""The clinical baseline: logistic regression on the clinical features alone."""

from __future__ import annotations

import numpy as np

from cellbag.aggregate.base import AggregateError, Head, as_bags
from cellbag.aggregate.registry import register_head


@register_head("clinical")
class ClinicalHead(Head):
    """Class-balanced logistic regression on the (standardised) clinical features; the
    bags are checked but not used. It is the fusion stage of the other heads with an
    image score of 0, so what fusion adds over it is measured on the same footing."""

    image_model = False

    def __init__(self, clinical: bool = True, seed: int = 0) -> None:
        super().__init__(clinical=clinical, seed=seed)

    def fit(self, X, y) -> ClinicalHead:
        _, clin = as_bags(X)
        if not self.clinical or clin is None or clin.shape[1] == 0:
            raise AggregateError(
                "head 'clinical' needs clinical features (Bags(bags, clinical)); "
                "it cannot run with --no-clinical"
            )
        return super().fit(X, y)

    def _fit(self, bags, y) -> np.ndarray:
        return np.zeros(len(bags))

    def _decision(self, bags) -> np.ndarray:
        return np.zeros(len(bags))

    def _get_state(self):
        return {}, {}, {}

    def _set_state(self, meta, arrays, texts):
        pass
