"""Downstream evaluation: one evaluator per augmentation scenario (knowledge, memory, long context, ICL, tools)."""

from llm_embedder.evaluation.downstream.base import (
    DownstreamEvaluator,
    DownstreamScores,
    DownstreamSettings,
    LanguageModel,
    RetrievedKey,
)
from llm_embedder.evaluation.downstream.registry import DOWNSTREAM, get_downstream, register_downstream

__all__ = [
    "DOWNSTREAM",
    "DownstreamEvaluator",
    "DownstreamScores",
    "DownstreamSettings",
    "LanguageModel",
    "RetrievedKey",
    "get_downstream",
    "register_downstream",
]
