"""Errors of the feature store (one line, naming the store and the encoder)."""

from __future__ import annotations

from cellbag.errors import CellbagError


class StoreError(CellbagError, ValueError):
    """A store cannot be created, opened, read or written as asked."""


class EncoderNotReady(StoreError, KeyError):
    """An encoder is missing from a store or its embeddings are unfinished."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LockError(StoreError):
    """Another live job holds the encoder's lock."""


class StoreExists(StoreError):
    """A store already lives at the path given to :meth:`Store.create`."""


class CorruptStore(StoreError):
    """Stored embeddings are missing, fail their checksum or hold non-finite values."""


class FeatureImportError(StoreError):
    """Features or labels that cannot be imported; the message names the file and patient."""
