"""Hybrid retrieval: reciprocal-rank fusion (RRF) of several retrievers over the same corpus.

RRF (Cormack, Clarke & Buettcher, SIGIR 2009) scores a row by ``sum_i w_i / (k_rrf + rank_i)`` over the
retrievers that returned it (rank starting at 1). It uses ranks only, so BM25 scores and cosine similarities
need no calibration against each other; ``k_rrf = 60`` is the paper's constant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import Retriever, SearchResult
from llm_embedder.retrieval.bm25 import rank_candidates_bm25
from llm_embedder.retrieval.index import pad_result

__all__ = ["HybridRetriever", "rank_candidates_bm25", "reciprocal_rank_fusion"]


def reciprocal_rank_fusion(
    results: Sequence[SearchResult], k: int, *, k_rrf: int = 60, weights: Sequence[float] | None = None
) -> SearchResult:
    """Fuse per-retriever results for the same queries; equal fused scores are ordered by corpus row."""
    if not results:
        raise UserError("reciprocal-rank fusion needs at least one result")
    weights = [1.0] * len(results) if weights is None else list(weights)
    if len(weights) != len(results):
        raise UserError(f"{len(weights)} weights given for {len(results)} retrievers")
    n = results[0].ids.shape[0]
    rows_out: list[list[int]] = []
    scores_out: list[list[float]] = []
    for i in range(n):
        fused: dict[int, float] = defaultdict(float)
        for weight, result in zip(weights, results, strict=True):
            for rank, (row, _) in enumerate(result.hits(i), start=1):
                fused[row] += weight / (k_rrf + rank)
        ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        rows_out.append([row for row, _ in ranked])
        scores_out.append([score for _, score in ranked])
    return pad_result(rows_out, scores_out, k)


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
