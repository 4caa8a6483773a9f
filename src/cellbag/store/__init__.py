"""The Zarr feature store: cells and patients of a cohort, embeddings of several encoders.

No torch here: aggregators and retrieval read bags without image or model code.
"""

from cellbag.store.blocks import block_range, chunks_for_rank, n_blocks
from cellbag.store.errors import EncoderNotReady, LockError, StoreError
from cellbag.store.export import export_h5
from cellbag.store.feature_store import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_CHUNK_ROWS,
    FORMAT,
    FORMAT_VERSION,
    STATUS_OK,
    STATUS_UNREADABLE,
    Store,
)
from cellbag.store.lock import JobLock, pid_alive

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_CHUNK_ROWS",
    "FORMAT",
    "FORMAT_VERSION",
    "STATUS_OK",
    "STATUS_UNREADABLE",
    "EncoderNotReady",
    "JobLock",
    "LockError",
    "Store",
    "StoreError",
    "block_range",
    "chunks_for_rank",
    "export_h5",
    "n_blocks",
    "pid_alive",
]
