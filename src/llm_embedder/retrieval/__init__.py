"""Retrieval over a corpus: dense (faiss), sparse (BM25 via bm25s) and hybrid (reciprocal-rank fusion).

Names are imported lazily, so ``from llm_embedder.retrieval import SearchResult`` does not load faiss or bm25s.
"""

from __future__ import annotations

import importlib
from typing import Any

from llm_embedder.retrieval.base import Retriever, SearchResult

_LAZY = {
    "DenseIndex": "index",
    "IndexParams": "index",
    "CorpusRows": "corpus_file",
    "top_k_desc": "ranking",
    "DenseRetriever": "dense",
    "build_index_folder": "dense",
    "rank_candidates_dense": "dense",
    "BM25Retriever": "bm25",
    "rank_candidates_bm25": "bm25",
    "HybridRetriever": "hybrid",
    "reciprocal_rank_fusion": "fusion",
}

__all__ = ["Retriever", "SearchResult", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_embedder.retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llm_embedder.retrieval.{module}"), name)
