"""Retrievers to compare in ``eval``: the project's one registry, :mod:`llm_embedder.retrieval.registry`, under the
names evaluation has always used (``EvalRetriever`` is :class:`~llm_embedder.retrieval.baselines.PoolRetriever`)."""

from __future__ import annotations

from llm_embedder.retrieval.baselines import (
    BM25Retrieval,
    EmbedderRetrieval,
    HybridRetrieval,
    IndexRetrieval,
    NoRetrieval,
    RandomRetrieval,
    RecencyRetrieval,
)
from llm_embedder.retrieval.baselines import PoolRetriever as EvalRetriever
from llm_embedder.retrieval.fusion import K_RRF
from llm_embedder.retrieval.registry import (
    BASELINES,
    EmbedderLoader,
    build_retriever,
    caching_loader,
    parse_retriever_spec,
)

__all__ = [
    "BASELINES",
    "K_RRF",
    "BM25Retrieval",
    "EmbedderLoader",
    "EmbedderRetrieval",
    "EvalRetriever",
    "HybridRetrieval",
    "IndexRetrieval",
    "NoRetrieval",
    "RandomRetrieval",
    "RecencyRetrieval",
    "build_retriever",
    "caching_loader",
    "parse_retriever_spec",
]
