"""Retrieval-only scenarios (tool, convsearch): the paper evaluates them by retrieval metrics alone (nDCG@5 on
ToolBench, nDCG@3 on QReCC), so no LLM is involved; the runner adds the task table's retrieval metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import DownstreamEvaluator, DownstreamScores, LanguageModel, RetrievedKey


class RetrievalOnlyEvaluator(DownstreamEvaluator):
    """No downstream metric: the task is judged by its retrieval metrics (``evaluation.metrics``)."""

    name: ClassVar[str] = "retrieval"
    needs_lm: ClassVar[bool] = False
    supports_no_retrieval: ClassVar[bool] = False

    def score_records(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> DownstreamScores:
        return DownstreamScores({})
