"""In-context learning (icl): accuracy by likelihood ranking of the label options with retrieved demonstrations.

The prompt is the icl task's template (``{key}\n{query}\n{answer}`` in the built-in table, the reference's): the
kept demonstrations joined by ``key_separator`` (``\n``, as the reference's evaluation), least relevant first so
that the MOST relevant one sits right before the query (``key_order: nearest_last``), then the query; each option
of ``record.options`` is scored as the answer. When the demonstrations overflow the budget, the least relevant ones
are dropped whole (a demonstration cut in half loses its label); the reference instead dropped the most relevant.

Which option is the prediction is the task table's ``evaluation.option_score``:

* ``mean`` (default, the reference's ``perplexity_to_choice``): the lowest mean negative log-likelihood per token;
* ``sum``: the largest summed log-probability - it favours options with fewer tokens (a two-token option needs each
  token to be far likelier to beat a one-token one), so label sets whose verbalisers differ in length are biased.

``accuracy`` is over records; ``accuracy_macro`` averages the accuracy of each label set (records sharing the same
options form one sub-task, e.g. SST-2 vs TREC), the paper's "ICL avg" without needing dataset names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import (
    DownstreamEvaluator,
    DownstreamScores,
    LanguageModel,
    RetrievedKey,
    record_error,
    require_answers,
)
from llm_embedder.evaluation.downstream.scoring import build_scoring_request, score


def pick_option(sum_logprob: Sequence[float], n_tokens: Sequence[int], rule: str) -> int:
    """Index of the predicted option: ``mean`` - highest mean log-probability per token (lowest mean NLL), ``sum`` -
    highest summed log-probability. Ties go to the first option."""
    sums = np.asarray(sum_logprob, dtype=np.float64)
    if rule == "sum":
        return int(np.argmax(sums))
    if rule == "mean":
        return int(np.argmax(sums / np.maximum(np.asarray(n_tokens, dtype=np.float64), 1.0)))
    raise ValueError(f"unknown option rule {rule!r} (mean or sum)")


class ICLEvaluator(DownstreamEvaluator):
    """Accuracy of picking the gold label (``answers[0]``) among ``options`` by LLM likelihood."""

    name: ClassVar[str] = "icl"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "accuracy_macro")
    per_record_metrics: ClassVar[frozenset[str]] = frozenset({"accuracy"})

    def check_records(self, records: Sequence[Record]) -> None:
        require_answers(records, "icl")
        for record in records:
            if not record.options or len(record.options) < 2:
                raise record_error(
                    record,
                    "needs at least two label options",
                    "options",
                    'list the label verbalisers, e.g. ["Negative", "Positive"]',
                )
            if (record.answers or [""])[0] not in record.options:
                raise record_error(record, f"gold answer {record.answers[0]!r} is not one of the options", "answers")

    def score_records(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> DownstreamScores:
        assert lm is not None
        budget = self.settings.max_prompt_tokens
        requests, owner = [], []
        for i, (record, keys) in enumerate(zip(records, retrieved, strict=True)):
            prompt = self.render(lm.tokenizer, record, keys)
            for option in record.options or []:
                requests.append(build_scoring_request(lm, replace(prompt, answer=option), budget=budget))
                owner.append(i)
        sum_lp, n_tok = score(lm, requests, self.settings, desc="icl option likelihood")
        per_record: list[tuple[list[float], list[int]]] = [([], []) for _ in records]
        for i, lp, n in zip(owner, sum_lp, n_tok, strict=True):
            per_record[i][0].append(float(lp))
            per_record[i][1].append(int(n))
        rule = self.spec.evaluation.option_score
        correct = []
        groups: dict[tuple[str, ...], list[bool]] = defaultdict(list)
        for record, (sums, counts) in zip(records, per_record, strict=True):
            options = record.options or []
            ok = options[pick_option(sums, counts, rule)] == (record.answers or [""])[0]
            correct.append(ok)
            groups[tuple(sorted(options))].append(ok)
        metrics = {
            "accuracy": float(np.mean(correct)),
            "accuracy_macro": float(np.mean([np.mean(g) for g in groups.values()])),
        }
        return DownstreamScores(metrics, {"accuracy": [float(ok) for ok in correct]})
