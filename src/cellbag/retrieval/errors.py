"""Errors of the retrieval stage (one line each, naming the index, store or cell)."""

from __future__ import annotations

from cellbag.errors import CellbagError


class RetrievalError(CellbagError, ValueError):
    """A retrieval index or query cannot be built or answered as asked."""


class StaleIndexError(RetrievalError):
    """A saved index was built from other embeddings than the store now holds."""
