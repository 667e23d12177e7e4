"""Ranking helpers shared by every retriever: deterministic top-k and padded results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_embedder.retrieval.base import SearchResult


def top_k_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first; ties broken by lower position (deterministic).

    ``np.argpartition`` alone leaves ties at the cut in arbitrary order, so every element tied with the k-th
    score is kept and the candidates are sorted on (-score, position).
    """
    scores = np.asarray(scores)
    n = scores.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    clean = np.where(np.isnan(scores), -np.inf, scores)
    if k < n:
        part = np.argpartition(-clean, k - 1)[:k]
        cand = np.flatnonzero(clean >= clean[part].min())
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -clean[cand]))
    return cand[order][:k].astype(np.int64)


def pad_result(rows: Sequence[Sequence[int]], scores: Sequence[Sequence[float]], k: int) -> SearchResult:
    """A :class:`SearchResult` from ragged per-query hits, padded with id -1 / score -inf."""
    n = len(rows)
    ids = np.full((n, k), -1, dtype=np.int64)
    out = np.full((n, k), -np.inf, dtype=np.float32)
    for i, (r, s) in enumerate(zip(rows, scores, strict=True)):
        m = min(len(r), k)
        ids[i, :m] = np.asarray(r[:m], dtype=np.int64)
        out[i, :m] = np.asarray(s[:m], dtype=np.float32)
    return SearchResult(ids=ids, scores=out)
