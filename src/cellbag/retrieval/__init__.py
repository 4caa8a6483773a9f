"""Nearest-cell retrieval: a cosine faiss index per encoder of a store, queries, pictures.

``build_index(store, encoder_id, kind='auto')`` builds and saves the index beside the
store; ``neighbors(store, encoder_id, cell_id=..., image=..., k=10, other_patients=False,
split='all')`` answers a query as a DataFrame; ``montage`` and ``html_page`` draw it.
faiss is imported only when an index is built or read.
"""

from cellbag.retrieval.faiss_index import (
    EXACT_MAX,
    KINDS,
    CellIndex,
    IndexParams,
    RetrievalError,
    StaleIndexError,
    choose_params,
    set_threads,
)
from cellbag.retrieval.query import Retriever, neighbors, open_image
from cellbag.retrieval.render import html_page, label_name, montage
from cellbag.retrieval.store_index import (
    RetrievalWarning,
    build_index,
    index_dir,
    load_index,
)

__all__ = [
    "EXACT_MAX",
    "KINDS",
    "CellIndex",
    "IndexParams",
    "RetrievalError",
    "RetrievalWarning",
    "Retriever",
    "StaleIndexError",
    "build_index",
    "choose_params",
    "html_page",
    "index_dir",
    "label_name",
    "load_index",
    "montage",
    "neighbors",
    "open_image",
    "set_threads",
]
