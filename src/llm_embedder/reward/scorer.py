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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llm_embedder.data.records import Record
from llm_embedder.errors import DataError, UserError
from llm_embedder.lm.likelihood import (
    char_budget,
    default_token_budget,
    max_token_chars,
    model_device,
    score_requests,
)
from llm_embedder.prompts.reward import DEFAULT_MAX_KEY_TOKENS, RecordPrompts, RewardPromptBuilder, _where
from llm_embedder.tasks.registry import TASKS, TaskRegistry

Reduction = Literal["mean", "sum"]


@dataclass
class PreparedRecord(RecordPrompts):
    """A record's requests and the record itself, so a problem found while scoring can name its file:line."""

    record: Record | None = None


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
        token_budget / max_batch_size: batching of the LM (see ``lm.likelihood.score_requests``); ``None`` =
            the default of the LM's device (``lm.likelihood.DEFAULT_TOKEN_BUDGET``: 1,024 on CPUs, 8,192 on GPUs).
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
        token_budget: int | None = None,
        max_batch_size: int = 64,
        add_bos: bool | None = None,
    ) -> None:
        if reduction not in ("mean", "sum"):
            raise UserError(f"unknown reduction {reduction!r}", hint="choose mean or sum")
        if token_budget is None:
            token_budget = default_token_budget(model_device(model))
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
        return PreparedRecord(self.builder(task).build(self.cut(record)).requests, record)

    def cut(self, record: Record) -> Record:
        """``record`` with its texts cut by characters to what the LM can use, BEFORE anything is tokenised.

        Why: one 50 MB field cost 7-9 GB of RAM when tokenised whole to keep 512 of its tokens (issue 11).
        Candidates keep their beginning, cut to :func:`~llm_embedder.lm.likelihood.char_budget` of
        ``max_key_tokens`` (or of the LM's context): their first ``max_key_tokens`` tokens, hence the scores,
        are unchanged. The query and the answers are never truncated; one longer than ``max_length`` tokens
        could hold (``max_length * max_token_chars`` characters) cannot fit the prompt and is refused here,
        before tokenising it. Returns ``record`` itself when nothing is cut, else a copy (the record written
        out keeps its texts).
        """
        key_tokens = self.max_key_tokens if self.max_key_tokens is not None else self.max_length
        if key_tokens is None:
            return record
        limit = char_budget(self.tokenizer, key_tokens)
        if self.max_length is not None:
            most = self.max_length * max_token_chars(self.tokenizer)
            texts = [("query", record.query), *(("answers", a) for a in record.answers or [])]
            for field, text in texts:
                if len(text) > most:
                    path, lineno = _where(record)
                    raise DataError(
                        path,
                        lineno,
                        f"is {len(text):,} characters, more than the LM's context of {self.max_length} tokens can "
                        f"hold (at most {max_token_chars(self.tokenizer)} characters per token)",
                        field=field,
                        hint="shorten it, or pass --skip-invalid to skip such records",
                    )
        if all(len(c) <= limit for c in record.candidates):
            return record
        changes: dict[str, Any] = {}
        for field in ("pos", "neg", "history"):
            texts = getattr(record, field)
            if texts and any(len(t) > limit for t in texts):
                changes[field] = [t[:limit] for t in texts]
        return dataclasses.replace(record, **changes)

    def score_prepared(self, prepared: Sequence[RecordPrompts], *, show_progress: bool = False) -> list[list[float]]:
        """Teacher scores (one list per record, one score per candidate) of already built requests.

        A NaN or infinite reward is never returned: it raises a DataError naming the record (file:line,
        query_id) - see :func:`_check_finite` for why the run stops instead of skipping the record.
        """
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
            _check_finite(prompts, scores)
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


def _check_finite(prompts: RecordPrompts, scores: list[float]) -> None:
    """Refuse a NaN/inf reward: written out, it would become a NaN model in ``train`` (issue 11).

    A non-finite log-likelihood is the LM's failure (fp16 overflow, broken weights), not a property of one
    record, so skipping the record would hide a broken teacher: the run stops with one line naming the record.
    """
    bad = [c for c, score in enumerate(scores) if not np.isfinite(score)]
    if not bad:
        return
    record = getattr(prompts, "record", None)
    path, lineno = _where(record) if record is not None else ("<record>", None)
    query_id = f" (query_id {record.query_id!r})" if record is not None and record.query_id is not None else ""
    raise DataError(
        path,
        lineno,
        f"the LM gave a non-finite reward ({scores[bad[0]]}) for candidate {bad[0]}{query_id}; "
        f"{len(bad)} of {len(scores)} candidates affected, nothing was written for this record",
        field="teacher_scores",
        hint="check the LM (weights, dtype: rerun with --dtype fp32)",
    )
