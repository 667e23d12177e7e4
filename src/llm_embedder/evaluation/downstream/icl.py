"""In-context learning (icl): accuracy by likelihood ranking of the label options with retrieved demonstrations.

Prompt = the kept demonstrations, least relevant first so that the MOST relevant one sits right before the query
(recency matters most to an LLM), then ``{query}\\n``; each option of ``record.options`` is scored as the target
and the most likely one is the prediction. When the demonstrations overflow the budget, the least relevant ones are
dropped whole (a demonstration cut in half loses its label); the reference instead truncated from the left after
putting the most relevant first, i.e. it dropped the best demonstrations.

``accuracy`` is over records; ``accuracy_macro`` averages the accuracy of each label set (records sharing the same
options form one sub-task, e.g. SST-2 vs TREC), the paper's "ICL avg" without needing dataset names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import (
    DownstreamEvaluator,
    LanguageModel,
    RetrievedKey,
    record_error,
    require_answers,
)
from llm_embedder.evaluation.downstream.prompting import build_scoring_request, score, select_keys, token_lengths

DEMO_SEPARATOR = "\n\n"


def build_icl_prompt(
    tokenizer: Any, demos: Sequence[str], query: str, *, budget: int, separator: str = DEMO_SEPARATOR
) -> tuple[str, list[int]]:
    """The prompt before the label, and the indices of the demos kept (in prompt order).

    ``demos`` are given most relevant first. They are kept in that order while they fit next to the query, so an
    overflow drops the least relevant; the prompt then lists them in reverse, most relevant nearest the query.
    """
    query_block = query.strip() + "\n"
    sep_tokens = max(token_lengths(tokenizer, [separator])[0], 1)
    fixed = token_lengths(tokenizer, [query_block])[0]
    kept = select_keys(
        tokenizer,
        [d.strip() for d in demos],
        budget=budget,
        fixed_tokens=fixed,
        separator_tokens=sep_tokens,
        truncate_overflow=False,
    )
    ordered = list(reversed(kept))
    return separator.join([text for _, text in ordered] + [query_block]), [i for i, _ in ordered]


class ICLEvaluator(DownstreamEvaluator):
    """Accuracy of picking the gold label (``answers[0]``) among ``options`` by LLM likelihood."""

    name: ClassVar[str] = "icl"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "accuracy_macro")

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

    def evaluate(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> dict[str, float]:
        assert lm is not None
        budget = self.settings.max_prompt_tokens
        requests, owner = [], []
        for i, (record, keys) in enumerate(zip(records, retrieved, strict=True)):
            context, _ = build_icl_prompt(
                lm.tokenizer, [k.text for k in keys[: self.top_k]], record.query, budget=budget
            )
            for option in record.options or []:
                requests.append(build_scoring_request(lm, context, option, budget=budget))
                owner.append(i)
        sum_lp, _ = score(lm, requests, self.settings, desc="icl option likelihood")
        scores: list[list[float]] = [[] for _ in records]
        for i, lp in zip(owner, sum_lp, strict=True):
            scores[i].append(float(lp))
        correct = []
        groups: dict[tuple[str, ...], list[bool]] = defaultdict(list)
        for record, option_scores in zip(records, scores, strict=True):
            options = record.options or []
            ok = options[int(np.argmax(option_scores))] == (record.answers or [""])[0]
            correct.append(ok)
            groups[tuple(sorted(options))].append(ok)
        return {
            "accuracy": float(np.mean(correct)),
            "accuracy_macro": float(np.mean([np.mean(g) for g in groups.values()])),
        }
