"""The retrievers a spec string can name (see :mod:`llm_embedder.retrieval.registry`): baselines, encoders, hybrids
and prebuilt indexes, each doing the two jobs retrieval has in this project:

- :meth:`PoolRetriever.search_corpus` / :meth:`PoolRetriever.corpus_retriever`: top-k rows of a shared corpus (qa,
  convsearch, tool, icl demonstrations; negatives mining);
- :meth:`PoolRetriever.rank_candidates`: a full ranking of each record's own candidates (chat history, earlier
  lrlm chunks, or pos+neg when no corpus is given).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import Retriever, SearchResult
from llm_embedder.retrieval.fusion import K_RRF, reciprocal_rank_fusion
from llm_embedder.tasks.spec import TaskSpec


def _rank_result(rows: Sequence[Sequence[int]], k: int) -> SearchResult:
    """A :class:`SearchResult` from ranked row lists (score = minus rank, so ties cannot reorder them)."""
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, ranked in enumerate(rows):
        top = list(ranked)[:k]
        ids[i, : len(top)] = top
        scores[i, : len(top)] = -np.arange(len(top), dtype=np.float32)
    return SearchResult(ids=ids, scores=scores)


class PoolRetriever(ABC):
    """A named retriever that searches a corpus of keys or ranks per-record candidates."""

    #: False only for the no-retrieval baseline: prompts get no keys and retrieval metrics are not computed
    retrieves: bool = True

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, spec: TaskSpec) -> None:  # noqa: B027 - optional hook
        """Make sure this retriever knows ``spec`` (a task registered after an encoder was loaded)."""

    @abstractmethod
    def rank_candidates(
        self, queries: Sequence[str], candidates: Sequence[Sequence[str]], *, task: str
    ) -> list[list[int]]:
        """For each query, the indices of its candidates, most relevant first (all of them)."""

    def corpus_retriever(self, keys: Sequence[str], *, task: str) -> Retriever:
        """A :class:`Retriever` over ``keys`` built once (encoded / indexed), for many searches."""
        return _Bound(self, list(keys), task)

    def search_corpus(self, queries: Sequence[str], keys: Sequence[str], k: int, *, task: str) -> SearchResult:
        """Top-``k`` rows of the corpus ``keys`` for each query."""
        return self.corpus_retriever(keys, task=task).search(list(queries), k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class NoRetrieval(PoolRetriever):
    """The "none" baseline: the LLM works without retrieved context."""

    retrieves = False

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        return [[] for _ in queries]

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        return _rank_result([[] for _ in queries], k)


class RandomRetrieval(PoolRetriever):
    """Uniformly random keys, seeded per query position, so reruns and other retrievers' runs do not interact."""

    def __init__(self, name: str = "random", seed: int = 0) -> None:
        super().__init__(name)
        self.seed = seed

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        return [
            [int(j) for j in np.random.default_rng([self.seed, i]).permutation(len(c))]
            for i, c in enumerate(candidates)
        ]

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        n = min(k, len(keys))
        rows = [np.random.default_rng([self.seed, i]).choice(len(keys), n, replace=False) for i in range(len(queries))]
        return _rank_result([[int(r) for r in row] for row in rows], k)


class RecencyRetrieval(PoolRetriever):
    """The memory baseline of the paper: the most recent candidates (the last of the list) first."""

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        return [list(range(len(c) - 1, -1, -1)) for c in candidates]

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        raise UserError(
            "retriever 'recency' ranks a record's own candidates (chat history, earlier lrlm chunks); "
            f"task {task!r} retrieves from a corpus",
            hint="drop --corpus to rank each record's candidates, or compare none/random/bm25/embedders",
        )


class BM25Retrieval(PoolRetriever):
    """Lexical baseline (bm25s, English stop words)."""

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        from llm_embedder.retrieval.hybrid import rank_candidates_bm25

        return [list(rank_candidates_bm25(q, list(c))) if c else [] for q, c in zip(queries, candidates, strict=True)]

    def corpus_retriever(self, keys: Sequence[str], *, task: str) -> Retriever:
        from llm_embedder.retrieval.bm25 import BM25Retriever

        return BM25Retriever(list(keys), name=self.name)


class EmbedderRetrieval(PoolRetriever):
    """Dense retrieval with an :class:`LLMEmbedder` (the task's instructions on both sides, cosine similarity)."""

    def __init__(self, name: str, embedder: Any) -> None:
        super().__init__(name)
        self.embedder = embedder

    def prepare(self, spec: TaskSpec) -> None:
        # Tasks saved with a trained model win (their instructions were trained); unknown ones are added.
        if spec.name not in self.embedder.tasks:
            self.embedder.tasks.register(spec)

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        from llm_embedder.retrieval.dense import rank_candidates_dense

        return rank_candidates_dense(self.embedder, task, list(queries), candidates)

    def corpus_retriever(self, keys: Sequence[str], *, task: str) -> Retriever:
        from llm_embedder.retrieval.dense import DenseRetriever

        return DenseRetriever(self.embedder, task, list(keys), name=self.name)


class HybridRetrieval(PoolRetriever):
    """BM25 + an embedder fused by reciprocal rank (the embedder: ``default`` unless ``hybrid:PATH``)."""

    def __init__(self, name: str, parts: Sequence[PoolRetriever]) -> None:
        super().__init__(name)
        self.parts = list(parts)

    def prepare(self, spec: TaskSpec) -> None:
        for part in self.parts:
            part.prepare(spec)

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        rankings = [part.rank_candidates(queries, candidates, task=task) for part in self.parts]
        depth = max([len(c) for c in candidates] + [1])
        fused = reciprocal_rank_fusion([_ranked_result(r, depth) for r in rankings], depth, k_rrf=K_RRF)
        return [[row for row, _ in fused.hits(i)] for i in range(len(candidates))]

    def corpus_retriever(self, keys: Sequence[str], *, task: str) -> Retriever:
        from llm_embedder.retrieval.hybrid import HybridRetriever

        parts = [part.corpus_retriever(keys, task=task) for part in self.parts]
        return HybridRetriever(parts, k_rrf=K_RRF, name=self.name)


class IndexRetrieval(PoolRetriever):
    """A prebuilt index (an ``llm-embedder index`` folder or a store URI) over the very corpus being searched."""

    def __init__(self, name: str, target: str, **open_options: Any) -> None:
        super().__init__(name)
        self.target = target
        self.open_options = open_options

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        raise UserError(
            f"retriever {self.name!r} is a prebuilt index; it cannot rank each record's own candidates",
            hint="give --corpus (the indexed corpus), or use an encoder / bm25",
        )

    def corpus_retriever(self, keys: Sequence[str], *, task: str) -> Retriever:
        from llm_embedder.retrieval.registry import open_index

        opened = open_index(self.target, **self.open_options)
        if len(opened.rows) != len(keys):
            raise UserError(
                f"index {self.target} covers {len(opened.rows)} rows but the corpus has {len(keys)}",
                hint="use the index of this corpus, or an encoder / bm25",
            )
        return opened.retriever


class _Bound:
    """A :class:`Retriever` from a retriever whose corpus search has no state worth keeping (none, random)."""

    def __init__(self, retriever: PoolRetriever, keys: list[str], task: str) -> None:
        self.retriever = retriever
        self.keys = keys
        self.task = task
        self.name = retriever.name

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult:
        return type(self.retriever).search_corpus(self.retriever, list(queries), self.keys, k, task=self.task)


def _ranked_result(rankings: Sequence[Sequence[int]], k: int) -> SearchResult:
    return _rank_result(rankings, k)
