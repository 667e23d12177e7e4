"""Hybrid retrieval: reciprocal-rank fusion (:mod:`llm_embedder.retrieval.fusion`) of several retrievers over the
same corpus."""

from __future__ import annotations

from collections.abc import Sequence

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import Retriever, SearchResult
from llm_embedder.retrieval.bm25 import rank_candidates_bm25
from llm_embedder.retrieval.fusion import reciprocal_rank_fusion

__all__ = ["HybridRetriever", "rank_candidates_bm25", "reciprocal_rank_fusion"]


class HybridRetriever:
    """Reciprocal-rank fusion of ``retrievers`` (e.g. BM25 + dense), which must index the same corpus rows.

    Args:
        retrievers: the retrievers to fuse.
        k_rrf: RRF constant; larger values flatten the advantage of top ranks.
        weights: one weight per retriever (default 1 each).
        name: label in reports.
        depth: hits taken from each retriever before fusion (default ``max(k, 100)``).
    """

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        *,
        k_rrf: int = 60,
        weights: Sequence[float] | None = None,
        name: str = "hybrid",
        depth: int | None = None,
    ) -> None:
        if not retrievers:
            raise UserError("a hybrid retriever needs at least one retriever")
        if weights is not None and len(weights) != len(retrievers):
            raise UserError(f"{len(weights)} weights given for {len(retrievers)} retrievers")
        if k_rrf < 0:
            raise UserError(f"k_rrf must be >= 0, got {k_rrf}")
        self.retrievers = list(retrievers)
        self.k_rrf = int(k_rrf)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.name = name
        self.depth = depth

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult:
        if isinstance(queries, str):
            queries = [queries]
        depth = max(int(k), int(self.depth or 100))
        results = [retriever.search(queries, depth) for retriever in self.retrievers]
        return reciprocal_rank_fusion(results, int(k), k_rrf=self.k_rrf, weights=self.weights)
