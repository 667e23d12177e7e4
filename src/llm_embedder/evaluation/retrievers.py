"""Retrievers to compare, built from short spec strings: ``none``, ``random``, ``recency``, ``bm25``, ``hybrid``,
``default`` (the bundled MiniLM), any embedder folder or hub id, optionally labelled as ``label=spec``.

Every retriever does two jobs, because the scenarios retrieve from two kinds of pools:
- :meth:`EvalRetriever.search_corpus`: top-k rows of a shared corpus (qa, convsearch, tool, icl demonstrations);
- :meth:`EvalRetriever.rank_candidates`: a full ranking of each record's own candidates (chat history, earlier
  lrlm chunks, or pos+neg when no corpus is given).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.tasks.spec import TaskSpec

#: reciprocal-rank-fusion constant of the hybrid baseline (Cormack et al. 2009; the usual 60)
K_RRF = 60


def _rank_result(rows: Sequence[Sequence[int]], k: int) -> SearchResult:
    """A :class:`SearchResult` from ranked row lists (score = minus rank, so ties cannot reorder them)."""
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, ranked in enumerate(rows):
        top = list(ranked)[:k]
        ids[i, : len(top)] = top
        scores[i, : len(top)] = -np.arange(len(top), dtype=np.float32)
    return SearchResult(ids=ids, scores=scores)


class EvalRetriever(ABC):
    """A retriever under evaluation: a display name and the two retrieval jobs of the scenarios."""

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

    @abstractmethod
    def search_corpus(self, queries: Sequence[str], keys: Sequence[str], k: int, *, task: str) -> SearchResult:
        """Top-``k`` rows of the corpus ``keys`` for each query."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class NoRetrieval(EvalRetriever):
    """The "none" baseline: the LLM works without retrieved context."""

    retrieves = False

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        return [[] for _ in queries]

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        return _rank_result([[] for _ in queries], k)


class RandomRetrieval(EvalRetriever):
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


class RecencyRetrieval(EvalRetriever):
    """The memory baseline of the paper: the most recent candidates (the last of the list) first."""

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        return [list(range(len(c) - 1, -1, -1)) for c in candidates]

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        raise UserError(
            "retriever 'recency' ranks a record's own candidates (chat history, earlier lrlm chunks); "
            f"task {task!r} retrieves from a corpus",
            hint="drop --corpus to rank each record's candidates, or compare none/random/bm25/embedders",
        )


class BM25Retrieval(EvalRetriever):
    """Lexical baseline (bm25s, English stop words)."""

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        from llm_embedder.retrieval.hybrid import rank_candidates_bm25

        return [list(rank_candidates_bm25(q, list(c))) if c else [] for q, c in zip(queries, candidates, strict=True)]

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        from llm_embedder.retrieval.bm25 import BM25Retriever

        return BM25Retriever(list(keys), name=self.name).search(list(queries), k)


class EmbedderRetrieval(EvalRetriever):
    """Dense retrieval with an :class:`LLMEmbedder` (the task's instructions on both sides, cosine similarity)."""

    def __init__(self, name: str, embedder: Any) -> None:
        super().__init__(name)
        self.embedder = embedder

    def prepare(self, spec: TaskSpec) -> None:
        # Tasks saved with a trained model win (their instructions were trained); unknown ones are added.
        if spec.name not in self.embedder.tasks:
            self.embedder.tasks.register(spec)

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        # Candidates repeat across records (shared history, overlapping chunks): embed each distinct text once.
        distinct: dict[str, int] = {}
        for cands in candidates:
            for text in cands:
                distinct.setdefault(text, len(distinct))
        q = self.embedder.encode_queries(list(queries), task=task)
        keys = self.embedder.encode_keys(list(distinct), task=task)
        out = []
        for i, cands in enumerate(candidates):
            if not cands:
                out.append([])
                continue
            sims = keys[[distinct[t] for t in cands]] @ q[i]
            out.append([int(j) for j in np.argsort(-sims, kind="stable")])
        return out

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        from llm_embedder.retrieval.dense import DenseRetriever

        return DenseRetriever(self.embedder, task, list(keys), name=self.name).search(list(queries), k)


class HybridRetrieval(EvalRetriever):
    """BM25 + an embedder fused by reciprocal rank (the embedder: ``default`` unless ``hybrid:PATH``)."""

    def __init__(self, name: str, parts: Sequence[EvalRetriever]) -> None:
        super().__init__(name)
        self.parts = list(parts)

    def prepare(self, spec: TaskSpec) -> None:
        for part in self.parts:
            part.prepare(spec)

    def rank_candidates(self, queries, candidates, *, task):  # type: ignore[no-untyped-def]
        rankings = [part.rank_candidates(queries, candidates, task=task) for part in self.parts]
        out = []
        for i, cands in enumerate(candidates):
            fused = np.zeros(len(cands))
            for ranking in rankings:
                for rank, j in enumerate(ranking[i]):
                    fused[j] += 1.0 / (K_RRF + rank + 1)
            out.append([int(j) for j in np.argsort(-fused, kind="stable")])
        return out

    def search_corpus(self, queries, keys, k, *, task):  # type: ignore[no-untyped-def]
        from llm_embedder.retrieval.bm25 import BM25Retriever
        from llm_embedder.retrieval.dense import DenseRetriever
        from llm_embedder.retrieval.hybrid import HybridRetriever

        retrievers = []
        for part in self.parts:
            if isinstance(part, EmbedderRetrieval):
                retrievers.append(DenseRetriever(part.embedder, task, list(keys), name=part.name))
            else:
                retrievers.append(BM25Retriever(list(keys), name=part.name))
        return HybridRetriever(retrievers, k_rrf=K_RRF).search(list(queries), k)


EmbedderLoader = Callable[[str], Any]

#: names that are baselines, not embedder folders
BASELINES = ("none", "random", "recency", "bm25", "hybrid")


def parse_retriever_spec(spec: str) -> tuple[str, str]:
    """``"label=spec"`` -> ``(label, spec)``; a bare spec is its own label."""
    spec = spec.strip()
    if not spec:
        raise UserError(
            "empty retriever name", hint=f"use one of {', '.join(BASELINES)}, default, or an encoder folder"
        )
    label, sep, rest = spec.partition("=")
    if sep and label and rest and "/" not in label and not Path(spec).exists():
        return label.strip(), rest.strip()
    return spec, spec


def build_retriever(
    spec: str,
    *,
    seed: int = 0,
    load_embedder: EmbedderLoader | None = None,
) -> EvalRetriever:
    """The retriever a spec string names (see the module doc).

    ``load_embedder(path_or_id)`` loads an encoder; the default makes an :class:`LLMEmbedder` (one-line error
    when the folder or hub id cannot be found). Pass a caching loader to share encoders between retrievers.
    """
    label, name = parse_retriever_spec(spec)
    if load_embedder is None:
        load_embedder = _load_embedder
    if name == "none":
        return NoRetrieval(label)
    if name == "random":
        return RandomRetrieval(label, seed=seed)
    if name == "recency":
        return RecencyRetrieval(label)
    if name == "bm25":
        return BM25Retrieval(label)
    if name == "hybrid" or name.startswith("hybrid:"):
        encoder = name.partition(":")[2] or "default"
        return HybridRetrieval(label, [BM25Retrieval("bm25"), EmbedderRetrieval(encoder, load_embedder(encoder))])
    return EmbedderRetrieval(label, load_embedder(name))


def _load_embedder(name: str) -> Any:
    from llm_embedder.model.embedder import LLMEmbedder

    return LLMEmbedder(None if name == "default" else name)


def caching_loader(**embedder_kwargs: Any) -> EmbedderLoader:
    """An embedder loader that loads each encoder once (``default`` and ``hybrid`` then share one MiniLM)."""
    cache: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in cache:
            from llm_embedder.model.embedder import LLMEmbedder

            cache[name] = LLMEmbedder(None if name == "default" else name, **embedder_kwargs)
        return cache[name]

    return load
