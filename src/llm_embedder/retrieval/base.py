"""The contract every corpus retriever meets, so evaluation and serving never care which one they hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class SearchResult:
    """Top-k hits for a batch of queries: ``ids[i, j]`` is the corpus row of the j-th hit of query i.

    Rows with fewer than k hits are padded with id -1 and score -inf.
    """

    ids: np.ndarray  # int64 (n_queries, k)
    scores: np.ndarray  # float32 (n_queries, k), higher is better

    def hits(self, i: int) -> list[tuple[int, float]]:
        """The (row, score) pairs of query i, padding removed."""
        return [(int(r), float(s)) for r, s in zip(self.ids[i], self.scores[i], strict=True) if r >= 0]


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the top-k corpus rows for queries."""

    name: str

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult: ...
