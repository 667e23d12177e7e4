"""Perplexity scenarios (chat memory, long-range LM): how well does the LLM predict the target given the keys?

Perplexity is token-weighted over the whole set, ``exp(-sum(log p) / sum(tokens))``, i.e. every target token
counts once. The reference averaged per-sample perplexities, which lets a few short, surprising targets dominate
(method.md section 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import (
    DownstreamEvaluator,
    DownstreamScores,
    LanguageModel,
    RetrievedKey,
    require_answers,
)
from llm_embedder.evaluation.downstream.scoring import build_scoring_request, score


def token_weighted_perplexity(sum_logprob: Sequence[float] | np.ndarray, n_tokens: Sequence[int] | np.ndarray) -> float:
    """``exp(-sum(sum_logprob) / sum(n_tokens))``: the perplexity of all target tokens pooled together."""
    total_tokens = float(np.sum(np.asarray(n_tokens, dtype=np.float64)))
    if total_tokens <= 0:
        return float("nan")
    return float(np.exp(-np.sum(np.asarray(sum_logprob, dtype=np.float64)) / total_tokens))


class PerplexityEvaluator(DownstreamEvaluator):
    """Scores ``record.answers[0]`` after the task's prompt with the retrieved keys (the answer is never cut)."""

    metrics: ClassVar[tuple[str, ...]] = ("perplexity",)
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"perplexity", "log_perplexity"})
    #: per record only (not a column: the log of ``perplexity``), for the paired comparisons - see score_records
    per_record_metrics: ClassVar[frozenset[str]] = frozenset({"log_perplexity"})

    def check_records(self, records: Sequence[Record]) -> None:
        require_answers(records, self.name)

    def score_records(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> DownstreamScores:
        assert lm is not None
        requests = [
            build_scoring_request(
                lm,
                self.render(lm.tokenizer, record, keys, answer=(record.answers or [""])[0]),
                budget=self.settings.max_prompt_tokens,
            )
            for record, keys in zip(records, retrieved, strict=True)
        ]
        sum_lp, n_tok = score(lm, requests, self.settings, desc=f"{self.name} target likelihood")
        # The perplexity pools tokens, so a record's own perplexity does not average to it; its logarithm does, as
        # the mean of each record's NLL sum x records / all target tokens. The targets (and their token counts)
        # are the same whatever was retrieved, so two retrievers are compared record by record on these values.
        total = float(np.sum(np.asarray(n_tok, dtype=np.float64)))
        shares = [-float(lp) * len(requests) / total if total > 0 else float("nan") for lp in sum_lp]
        return DownstreamScores({"perplexity": token_weighted_perplexity(sum_lp, n_tok)}, {"log_perplexity": shares})
