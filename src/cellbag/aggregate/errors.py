"""Errors of the aggregate stage (one line each, naming the store, encoder or file)."""

from __future__ import annotations

from cellbag.errors import CellbagError


class AggregateError(CellbagError):
    """Bad input to a head, a cross-validation run or a saved model."""


class UnknownHeadError(AggregateError):
    """A head name that no module registered."""
