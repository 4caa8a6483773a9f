"""Errors of the aggregate stage (one line each, naming the store, encoder or file)."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError

from cellbag.errors import CellbagError


class AggregateError(CellbagError, ValueError):
    """Bad input to a head, a cross-validation run or a saved model (a ``ValueError``,
    as scikit-learn expects of an estimator given bad input)."""


class HeadNotFittedError(AggregateError, NotFittedError):
    """A head used before ``fit`` (scikit-learn's ``NotFittedError`` too)."""


class UnknownHeadError(AggregateError):
    """A head name that no module registered."""
