"""Retrieval over a corpus: dense (faiss), sparse (BM25 via bm25s) and hybrid (reciprocal-rank fusion)."""

from llm_embedder.retrieval.base import Retriever, SearchResult

__all__ = ["Retriever", "SearchResult"]
