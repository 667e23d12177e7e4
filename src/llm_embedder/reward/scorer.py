"""``RewardScorer``: teacher scores for records from an LLM's feedback (method.md section 3).

The reward of a candidate is how likely the LLM makes the expected answer when the candidate is in its prompt:
by default the MEAN log-probability of the answer's tokens (the reference's length-normalised choice; the paper
writes the product of probabilities, i.e. ``reduction="sum"`` in log space). A record with several answers gets,
per candidate, the mean of its per-answer rewards - every answer counts the same whatever its length, and one
score per candidate is what the losses consume.

All requests of the records handed to :meth:`RewardScorer.score` are scored together, so they share
length-bucketed batches and duplicates (the same passage for the same question and answer) are scored once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from llm_embedder.data.records import Record
from llm_embedder.errors import DataError, UserError
from llm_embedder.lm.likelihood import score_requests
from llm_embedder.prompts.reward import DEFAULT_MAX_KEY_TOKENS, RecordPrompts, RewardPromptBuilder, _where
from llm_embedder.tasks.registry import TASKS, TaskRegistry

Reduction = Literal["mean", "sum"]


def lm_context_length(model: Any) -> int | None:
    """The LM's context window in tokens (``max_position_embeddings``), if it states one."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


class RewardScorer:
    """Scores every candidate of a record with an LLM.

    Args:
        model: a Hugging Face causal LM in eval mode (see ``llm_embedder.lm.load_causal_lm``).
        tokenizer: its tokenizer.
        task: the task of all records; ``None`` = each record's own ``task`` field.
        registry: the task table (default: the global one, including ``--tasks`` files).
        template: override of the tasks' reward template (``kind: template`` tasks only).
        reduction: ``"mean"`` (default) or ``"sum"`` of the answer tokens' log-probabilities.
        max_key_tokens: truncate candidates to this many tokens (reference: 512).
        max_length: longest allowed prompt (default: the LM's context window).
        token_budget / max_batch_size: batching of the LM (see ``lm.likelihood.score_requests``).
        add_bos: prepend BOS; ``None`` follows the tokenizer.

    Example:
        >>> model, tokenizer = load_causal_lm("smollm2")
        >>> scorer = RewardScorer(model, tokenizer, task="qa")
        >>> scorer.score([record])   # [[reward of pos 0, ..., reward of neg -1]]
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        task: str | None = None,
        registry: TaskRegistry | None = None,
        template: str | None = None,
        reduction: Reduction = "mean",
        max_key_tokens: int | None = DEFAULT_MAX_KEY_TOKENS,
        max_length: int | None = None,
        token_budget: int = 8192,
        max_batch_size: int = 64,
        add_bos: bool | None = None,
    ) -> None:
        if reduction not in ("mean", "sum"):
            raise UserError(f"unknown reduction {reduction!r}", hint="choose mean or sum")
        if token_budget < 1 or max_batch_size < 1:
            raise UserError("--token-budget and --max-batch-size must be positive")
        self.model = model
        self.tokenizer = tokenizer
        self.registry = registry if registry is not None else TASKS
        self.task = task
        self.template = template
        self.reduction = reduction
        self.max_key_tokens = max_key_tokens
        self.max_length = max_length if max_length is not None else lm_context_length(model)
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.add_bos = add_bos
        self._builders: dict[str, RewardPromptBuilder] = {}
        if task is not None:
            self.builder(task)  # fail early: unknown task, task without reward, bad template

    def builder(self, task: str) -> RewardPromptBuilder:
        """The (cached) prompt builder of ``task``."""
        if task not in self._builders:
            self._builders[task] = RewardPromptBuilder(
                self.tokenizer,
                self.registry.get(task),
                template=self.template,
                max_key_tokens=self.max_key_tokens,
                max_length=self.max_length,
                add_bos=self.add_bos,
            )
        return self._builders[task]

    def prepare(self, record: Record) -> RecordPrompts:
        """The record's scoring requests; a bad record raises a DataError (file:line, field)."""
        task = self.task or record.task
        if task is None:
            path, lineno = _where(record)
            raise DataError(path, lineno, "missing", field="task", hint="pass --task or give each record a 'task'")
        return self.builder(task).build(record)

    def score_prepared(self, prepared: Sequence[RecordPrompts], *, show_progress: bool = False) -> list[list[float]]:
        """Teacher scores (one list per record, one score per candidate) of already built requests."""
        flat = [request for prompts in prepared for request in prompts.flat]
        sums, counts = score_requests(
            self.model,
            flat,
            token_budget=self.token_budget,
            max_batch_size=self.max_batch_size,
            show_progress=show_progress,
            desc="scoring candidates",
        )
        if self.reduction == "mean":
            values = sums / np.maximum(counts, 1)
        else:
            values = sums
        out: list[list[float]] = []
        offset = 0
        for prompts in prepared:
            scores = []
            for per_candidate in prompts.requests:
                n = len(per_candidate)
                scores.append(float(np.mean(values[offset : offset + n])))
                offset += n
            out.append(scores)
        return out

    def score(self, records: Sequence[Record], *, show_progress: bool = False) -> list[list[float]]:
        """Teacher scores of ``records`` (order of ``Record.candidates``: pos then neg, or the history)."""
        return self.score_prepared([self.prepare(r) for r in records], show_progress=show_progress)

    def fill(self, records: Sequence[Record], *, show_progress: bool = False) -> list[Record]:
        """``records`` with ``teacher_scores`` set (in place; returned for convenience)."""
        for record, scores in zip(records, self.score(records, show_progress=show_progress), strict=True):
            record.teacher_scores = scores
        return list(records)
