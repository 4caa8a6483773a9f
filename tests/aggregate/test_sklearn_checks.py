"""scikit-learn's own estimator checks for the heads (``parametrize_with_checks``).

A head's ``X`` is bags (a sequence of ``(n_cells, dim)`` arrays, or :class:`Bags`), while
scikit-learn's checks feed tables ``(n, d)``. :class:`OneCellBags` shows a head to them as a
classifier of tables: each row becomes a bag of one cell (for the clinical head, the row
is also the bag's clinical features). It converts the table with ``validate_data``
(``n_features_in_``, feature names, NaN/inf, sparse and dtype refusals are scikit-learn's
code there, not the head's; the head's own checks of bags are in ``test_heads.py``) and
hands everything else to the head: labels (binary only, one class, continuous targets,
strings), ``classes_``, ``predict_proba`` / ``decision_function`` / ``predict``,
determinism, ``clone``, pickling, subset and order invariance, not overwriting parameters.
The checks that need no data run on the bare heads as well.

Heads covered: meanpool, svm, lgbm (tiny settings) and clinical. Left out: the torch heads
(abmil, maxpool, transformer) and the ensemble built from them: each of the ~55 checks
fits a network (with inner folds for the Platt step), minutes in all against this file's
budget of seconds; their contract is tested by ``test_heads.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimators_unfitted,
    check_get_params_invariance,
    check_mixin_order,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    parametrize_with_checks,
)
from sklearn.utils.validation import check_is_fitted, validate_data

from cellbag.aggregate import AggregateError, Bags, make_head

#: small settings, so that ~55 checks of a head take seconds (the defaults search more)
FAST = {
    "meanpool": {},
    "svm": {"Cs": (1.0,), "gamma_scale": 1.0},
    "lgbm": {"n_estimators": 10, "n_components": 4, "n_clusters": 4},
    "clinical": {},
}

#: checks not run, and why (none so far: every check of the wrapped heads passes)
EXPECTED_FAILED: dict[str, dict[str, str]] = {}


class OneCellBags(ClassifierMixin, BaseEstimator):
    """A head as a classifier of tables: row ``i`` of ``X`` is bag ``i``, of one cell;
    ``clinical=True`` also gives the row as the bag's clinical features."""

    def __init__(self, head: object = None, clinical: bool = False) -> None:
        self.head = head
        self.clinical = clinical

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags = get_tags(self.head).classifier_tags  # binary only
        return tags

    def _bags(self, X: np.ndarray) -> Bags:
        return Bags(X[:, None, :], X if self.clinical else None)

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.head_ = clone(self.head).fit(self._bags(X), y)
        self.classes_ = self.head_.classes_
        return self

    def _x(self, X) -> Bags:
        check_is_fitted(self)
        return self._bags(validate_data(self, X, reset=False, dtype=np.float64))

    def decision_function(self, X):
        bags = self._x(X)
        return self.head_.decision_function(bags)

    def predict_proba(self, X):
        bags = self._x(X)
        return self.head_.predict_proba(bags)

    def predict(self, X):
        bags = self._x(X)
        return self.head_.predict(bags)


def _wrapped(name: str) -> OneCellBags:
    return OneCellBags(make_head(name, **FAST[name]), clinical=name == "clinical")


@parametrize_with_checks(
    [_wrapped(name) for name in FAST],
    expected_failed_checks=lambda est: EXPECTED_FAILED.get(est.head.name, {}),
)
def test_head_passes_sklearn_checks(estimator, check):
    check(estimator)


#: the checks that read no table (the rest feed (n, d) tables: run above, through the wrapper)
DATA_FREE = [
    check_estimator_cloneable,
    check_estimator_repr,
    check_no_attributes_set_in_init,
    check_get_params_invariance,
    check_set_params,
    check_parameters_default_constructible,
    check_do_not_raise_errors_in_init_or_set_params,
    check_mixin_order,
    check_estimators_unfitted,  # raises before it reads X
]


@pytest.mark.parametrize("check", DATA_FREE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", list(FAST))
def test_bare_head_passes_data_free_checks(name, check):
    head = make_head(name, **FAST[name])
    check(type(head).__name__, head)


def test_unfitted_head_raises_sklearns_not_fitted_error_in_one_line():
    head = make_head("meanpool")
    with pytest.raises(NotFittedError, match="call fit") as e:
        head.predict_proba([np.zeros((3, 4), np.float32)])
    assert isinstance(e.value, AggregateError)  # the CLI prints it as one line
