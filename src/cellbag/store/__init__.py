"""The Zarr feature store: cells and patients of a cohort, embeddings of several encoders;
features in from other MIL tools (``import_features``, ``from_arrays``) and out to
them (``export_h5``); the store describes itself (:mod:`cellbag.store.schema`).

No torch here: aggregators and retrieval read bags without image or model code.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "block_range": "cellbag.store.blocks",
    "chunks_for_rank": "cellbag.store.blocks",
    "n_blocks": "cellbag.store.blocks",
    "CorruptStore": "cellbag.store.errors",
    "EncoderNotReady": "cellbag.store.errors",
    "FeatureImportError": "cellbag.store.errors",
    "LockError": "cellbag.store.errors",
    "StoreError": "cellbag.store.errors",
    "StoreExists": "cellbag.store.errors",
    "LAYOUTS": "cellbag.store.export",
    "export_h5": "cellbag.store.export",
    "DEFAULT_BLOCK_ROWS": "cellbag.store.feature_store",
    "DEFAULT_CHUNK_ROWS": "cellbag.store.feature_store",
    "FORMAT": "cellbag.store.feature_store",
    "FORMAT_VERSION": "cellbag.store.feature_store",
    "STATUS_OK": "cellbag.store.feature_store",
    "STATUS_UNREADABLE": "cellbag.store.feature_store",
    "Store": "cellbag.store.feature_store",
    "from_arrays": "cellbag.store.importer",
    "import_features": "cellbag.store.importer",
    "JobLock": "cellbag.store.lock",
    "pid_alive": "cellbag.store.lock",
    "describe_encoders": "cellbag.store.resolve",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
