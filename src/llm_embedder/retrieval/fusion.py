"""Reciprocal-rank fusion (RRF), the one fusion rule of the project (hybrid retrievers, both stores, evaluation).

RRF (Cormack, Clarke & Buettcher, SIGIR 2009) scores a row by ``sum_i w_i / (k_rrf + rank_i)`` over the
retrievers that returned it (rank starting at 1). It uses ranks only, so BM25 scores and cosine similarities
need no calibration against each other; ``k_rrf = 60`` is the paper's constant (and Milvus' ``RRFRanker`` default).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.retrieval.ranking import pad_result

#: the RRF constant of the paper
K_RRF = 60


def reciprocal_rank_fusion(
    results: Sequence[SearchResult], k: int, *, k_rrf: int = K_RRF, weights: Sequence[float] | None = None
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
