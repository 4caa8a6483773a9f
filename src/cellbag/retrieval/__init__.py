"""Nearest-cell retrieval: a cosine faiss index per encoder of a store, queries, pictures.

``build_index(store, encoder_id, kind='auto')`` builds and saves the index beside the
store; ``neighbors(store, encoder_id, cell_id=..., image=..., k=10, other_patients=False,
split='all')`` answers a query as a DataFrame; ``montage`` and ``html_page`` draw it.
faiss is imported only when an index is built or read.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "EXACT_MAX": "cellbag.retrieval.faiss_index",
    "KINDS": "cellbag.retrieval.faiss_index",
    "CellIndex": "cellbag.retrieval.faiss_index",
    "IndexParams": "cellbag.retrieval.faiss_index",
    "RetrievalError": "cellbag.retrieval.errors",
    "StaleIndexError": "cellbag.retrieval.errors",
    "choose_params": "cellbag.retrieval.faiss_index",
    "set_threads": "cellbag.retrieval.faiss_index",
    "Retriever": "cellbag.retrieval.query",
    "neighbors": "cellbag.retrieval.query",
    "open_image": "cellbag.retrieval.query",
    "html_page": "cellbag.retrieval.render",
    "label_name": "cellbag.retrieval.render",
    "montage": "cellbag.retrieval.render",
    "RetrievalWarning": "cellbag.retrieval.store_index",
    "build_index": "cellbag.retrieval.store_index",
    "index_dir": "cellbag.retrieval.store_index",
    "load_index": "cellbag.retrieval.store_index",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
