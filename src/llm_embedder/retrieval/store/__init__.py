"""Document stores behind one contract (:mod:`llm_embedder.retrieval.store.base`): the embedded folder store (faiss +
bm25s, the default) and Milvus (``milvus://HOST:PORT``)."""

from __future__ import annotations

from llm_embedder.retrieval.store.base import (
    DEFAULT_SCOPE,
    SEARCH_MODES,
    Collection,
    CollectionInfo,
    Document,
    Filter,
    Hit,
    SearchMode,
    Store,
)

__all__ = [
    "DEFAULT_SCOPE",
    "SEARCH_MODES",
    "Collection",
    "CollectionInfo",
    "Document",
    "Filter",
    "Hit",
    "SearchMode",
    "Store",
]
