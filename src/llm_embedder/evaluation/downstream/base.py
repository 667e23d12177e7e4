"""What a scenario evaluator is: it turns records + retrieved keys into downstream metrics of an LLM.

Retrieval itself (ranking a corpus or a record's candidates, retrieval metrics) happens before, in
:mod:`llm_embedder.evaluation.retrieve`, so an evaluator only sees, per record, the retrieved keys (most relevant
first) and asks the LLM how much they help. Which evaluator a task uses is data: ``TaskSpec.evaluation.downstream``
names an entry of :mod:`llm_embedder.evaluation.downstream.registry`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from llm_embedder.data.records import Record
from llm_embedder.errors import DataError
from llm_embedder.prompts import RenderedPrompt, RetrievedKey, render_prompt
from llm_embedder.tasks.registry import TASKS
from llm_embedder.tasks.spec import TaskSpec


@dataclass
class DownstreamSettings:
    """Knobs shared by the scenario evaluators (the CLI's options)."""

    #: keys put in the prompt per record (None: the task table's ``evaluation.top_k``)
    top_k: int | None = None
    #: token budget of the prompt (retrieved keys + query); the target is never truncated
    max_prompt_tokens: int = 1024
    #: greedy generation length for answer-matching metrics (qa)
    max_new_tokens: int = 16
    #: prompts per generation batch
    generation_batch_size: int = 8
    #: padded tokens per scoring batch (see :func:`llm_embedder.lm.likelihood.score_requests`)
    token_budget: int = 8192
    max_batch_size: int = 64
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DownstreamScores:
    """What an evaluator measured: ``metrics`` over all records, and ``per_record`` - for each metric that is a mean
    over records (a record's exact match, its answer log-probability, whether its label was picked) - the value of
    every record, in record order. Why: the paired significance test compares two retrievers record by record on the
    LLM's own metric, not only on retrieval. A pooled metric is no mean of per-record values: perplexity gives its
    logarithm per record instead (``log_perplexity``), macro accuracy nothing."""

    metrics: dict[str, float]
    per_record: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class LanguageModel:
    """A loaded causal LM with its tokenizer (what ``load_causal_lm`` returns) and a display name."""

    model: Any
    tokenizer: Any
    name: str = "lm"


class DownstreamEvaluator(ABC):
    """Measures an LLM's output quality with the retrieved keys of each record in its prompt.

    Subclasses set ``name``, ``metrics`` (the names they report, in display order) and ``lower_is_better``, check
    the fields they need in :meth:`check_records`, and compute the metrics (with per-record values where the metric
    is a mean over records) in :meth:`score_records`.
    """

    name: ClassVar[str] = ""
    #: retrieval-only scenarios (tool, convsearch) need no LLM; the runner then skips loading one
    needs_lm: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = ()
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    #: "none" is a meaningful baseline when the LLM answers without retrieval
    supports_no_retrieval: ClassVar[bool] = True
    #: the metrics :meth:`score_records` gives per-record values for (means over records; maybe not columns)
    per_record_metrics: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: TaskSpec, settings: DownstreamSettings | None = None) -> None:
        self.spec = spec
        self.settings = settings or DownstreamSettings()
        self.prompt_spec = prompt_spec(spec)

    @property
    def top_k(self) -> int:
        return int(self.settings.top_k or self.spec.evaluation.top_k)

    def render(
        self, tokenizer: Any, record: Record, keys: Sequence[RetrievedKey], answer: str | None = None
    ) -> RenderedPrompt:
        """The task's prompt (its task-table template) with the top-k ``keys`` fitted to ``max_prompt_tokens``."""
        return render_prompt(
            self.prompt_spec,
            record.query,
            list(keys[: self.top_k]),
            tokenizer=tokenizer,
            max_tokens=self.settings.max_prompt_tokens,
            answer=answer,
            fields={k: v for k, v in record.extra.items() if isinstance(v, (str, int, float))},
            where=record.source or "",
        )

    def check_records(self, records: Sequence[Record]) -> None:  # noqa: B027 - optional hook
        """Raise :class:`DataError` (file:line, field) when a record lacks what this scenario needs."""

    @abstractmethod
    def score_records(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> DownstreamScores:
        """Metrics over all records and per-record values; ``retrieved[i]`` holds record i's keys, most relevant
        first (maybe empty)."""

    def evaluate(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> dict[str, float]:
        """Metrics over all records (:meth:`score_records` without the per-record values)."""
        return self.score_records(records, retrieved, lm).metrics


def prompt_spec(spec: TaskSpec) -> TaskSpec:
    """The task whose prompt a scenario renders: ``spec`` itself when it has a template; otherwise ``spec`` with the
    prompt (template, key separator, key order) of the task its scenario is named after - a user's task declared with
    ``evaluation.downstream: qa`` and no template reads like the qa task of the same table."""
    if spec.reward.template or spec.evaluation.downstream not in TASKS:
        return spec
    scenario = TASKS.get(spec.evaluation.downstream).reward
    reward = dataclasses.replace(
        spec.reward, template=scenario.template, key_separator=scenario.key_separator, key_order=scenario.key_order
    )
    return dataclasses.replace(spec, reward=reward)


def record_error(record: Record, message: str, field: str | None = None, hint: str | None = None) -> DataError:
    """A :class:`DataError` located at the record's file:line (records keep where they came from)."""
    source = record.source or "<records>"
    path, _, line = source.rpartition(":")
    if path and line.isdigit():
        return DataError(path, int(line), message, field=field, hint=hint)
    return DataError(source, None, message, field=field, hint=hint)


def require_answers(records: Sequence[Record], scenario: str) -> None:
    """Every record must carry at least one non-empty answer (the LLM's expected output)."""
    for record in records:
        if not record.answers or not any(a.strip() for a in record.answers):
            raise record_error(
                record,
                f"missing or empty (the {scenario} evaluation scores the LLM's expected output)",
                "answers",
                "give a list with at least one non-empty string",
            )
