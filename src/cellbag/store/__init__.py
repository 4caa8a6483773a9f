"""The Zarr feature store: cells and patients of a cohort, embeddings of several encoders;
features in from other MIL tools (``import_features``, ``Store.from_arrays``) and out to
them (``export_h5``); the store describes itself (:mod:`cellbag.store.schema`).

No torch here: aggregators and retrieval read bags without image or model code.
"""

from cellbag.store.blocks import block_range, chunks_for_rank, n_blocks
from cellbag.store.errors import EncoderNotReady, LockError, StoreError
from cellbag.store.export import LAYOUTS, export_h5
from cellbag.store.feature_store import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_CHUNK_ROWS,
    FORMAT,
    FORMAT_VERSION,
    STATUS_OK,
    STATUS_UNREADABLE,
    Store,
)
from cellbag.store.importer import FeatureImportError, import_features
from cellbag.store.lock import JobLock, pid_alive
from cellbag.store.resolve import describe_encoders

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_CHUNK_ROWS",
    "FORMAT",
    "FORMAT_VERSION",
    "STATUS_OK",
    "STATUS_UNREADABLE",
    "LAYOUTS",
    "EncoderNotReady",
    "FeatureImportError",
    "JobLock",
    "LockError",
    "Store",
    "StoreError",
    "block_range",
    "chunks_for_rank",
    "describe_encoders",
    "export_h5",
    "import_features",
    "n_blocks",
    "pid_alive",
]
