"""What a task is: instructions, key template, reward, training and evaluation settings.

A :class:`TaskSpec` is plain data; every part of the toolkit (embedder, reward scorer, trainer, evaluator) reads
its behaviour from it instead of branching on task names.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from llm_embedder.errors import UserError
from llm_embedder.utils.dataclass_build import build_dataclass as _build

CandidateSource = Literal["pos_neg", "history"]
RewardKind = Literal["template", "lrlm", "none"]
KeyOrder = Literal["relevance", "nearest_last", "chronological"]
PositiveSampling = Literal["first", "random", "teacher"]
NegativeSampling = Literal["random", "first", "teacher"]
PositiveRank = Literal["reference", "reward"]
OptionScore = Literal["mean", "sum"]
TruncationSide = Literal["right", "left"]

# training.loss is not listed: the loss registry (llm_embedder.training.losses.LOSSES) is the source of its names
_CHOICES: dict[str, tuple[str, ...]] = {
    "candidates": ("pos_neg", "history"),
    "reward.kind": ("template", "lrlm", "none"),
    "reward.key_order": ("relevance", "nearest_last", "chronological"),
    "training.positive": ("first", "random", "teacher"),
    "training.negatives": ("random", "first", "teacher"),
    "training.positive_rank": ("reference", "reward"),
    "evaluation.option_score": ("mean", "sum"),
    "query_truncation": ("right", "left"),
}


#: reward prompts cut each candidate key to this many LLM tokens (the reference's 512); here, not in prompts/, so the
#: command line reads it without importing torch
DEFAULT_MAX_KEY_TOKENS = 512

#: the loss registry's built-in names (``llm_embedder.training.losses.LOSSES``; a test keeps the two equal). Kept here
#: so that reading the task table never imports torch (``llm-embedder --help`` stays instant).
BUILTIN_LOSSES: tuple[str, ...] = ("contrastive", "kl_distillation", "stabilized_distillation")


def known_losses() -> tuple[str, ...]:
    """The loss names a task may use: the keys of the loss registry, built-in and user-registered.

    A user loss is registered through ``llm_embedder.training.losses.register_loss``, which imports that module; until
    it is imported nothing can have been registered, so the built-in names are the whole answer and torch stays out.
    """
    registry = sys.modules.get("llm_embedder.training.losses")
    if registry is None:
        return BUILTIN_LOSSES
    return tuple(registry.LOSSES)


@dataclass
class RewardSpec:
    """The task's prompt: how the LLM reward of a candidate is computed, and how retrieved keys are shown to an LLM.

    The template is rendered by the prompt layer (:func:`llm_embedder.prompts.render_prompt`) for reward scoring,
    downstream evaluation and serving alike, so changing it here (or in a ``--tasks`` file) changes all three.
    """

    kind: RewardKind = "none"
    #: ``{key}``, ``{query}``, ``{answer}`` (and any record field); for ``kind: lrlm`` only evaluation and serving
    #: read it (the reward joins the chunks token by token)
    template: str | None = None
    needs_answers: bool = False
    #: joins several keys in the ``{key}`` slot (evaluation, serving)
    key_separator: str = "\n"
    #: how several kept keys read: ``relevance`` (most relevant first), ``nearest_last`` (most relevant right
    #: before the query), ``chronological`` (by position in the conversation / document)
    key_order: KeyOrder = "relevance"


@dataclass
class TrainingSpec:
    """Loss and group-sampling defaults of a task (the reference's choices)."""

    #: a name of the loss registry (``llm_embedder.training.losses.LOSSES``; ``register_loss`` adds one)
    loss: str = "contrastive"
    contrastive_weight: float = 1.0
    distill_weight: float = 0.0
    teacher_temperature: float = 1.0
    stabilized_alpha: float = 1.0
    positive: PositiveSampling = "first"
    negatives: NegativeSampling = "random"
    min_score_margin: float = 0.0
    #: stabilized distillation's ranking: ``reference`` keeps the sampled positive at rank 1 and ranks only the
    #: negatives by reward (the authors' code); ``reward`` ranks the positive by its reward too
    positive_rank: PositiveRank = "reference"
    #: keep at most this many records of a training file - its LAST ones, after the margin filter (the reference:
    #: 10,000 for lrlm); ``None`` keeps all
    max_sample_num: int | None = None
    #: the student temperature tau of this task's losses; ``None`` uses the run's ``--temperature`` (the reference:
    #: 0.01 for every task). A contrastive task can want a softer one than the distillation tasks
    #: (docs/results.md, "Training check": tool at 0.05)
    temperature: float | None = None

    @property
    def needs_teacher_scores(self) -> bool:
        """Distillation losses and teacher-based positive choice need ``teacher_scores``."""
        return (self.loss != "contrastive" and self.distill_weight > 0) or self.positive == "teacher"


@dataclass
class EvaluationSpec:
    """How retrieval for this task is evaluated."""

    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@10", "mrr@10"])
    main_metric: str = "ndcg@10"
    downstream: str = "retrieval"
    top_k: int = 3
    #: scenarios that pick among label options (icl): ``mean`` - the option with the highest MEAN log-probability
    #: per token, i.e. the lowest mean NLL (the reference); ``sum`` - the highest summed log-probability (favours
    #: short options)
    option_score: OptionScore = "mean"


@dataclass
class TaskSpec:
    """One retrieval need of an LLM: e.g. ``qa``, ``chat`` or a user's own task."""

    name: str
    query_instruction: str
    key_instruction: str
    description: str = ""
    key_template: str = "{text}"
    candidates: CandidateSource = "pos_neg"
    #: which end of a too-long query is cut: ``right`` (the usual) or ``left`` - keep the END, for queries whose
    #: last part matters most (a conversation that ends with the question being searched for)
    query_truncation: TruncationSide = "right"
    #: at most this many tokens of query TEXT (the instruction and the special tokens come on top, within the
    #: model's query budget); the cut follows ``query_truncation``. ``None``: the whole query budget (the
    #: reference). For conversational search the end of a long conversation is what finds the passage, and the
    #: turns before it drown it (docs/results.md, "Training check")
    query_max_tokens: int | None = None
    reward: RewardSpec = field(default_factory=RewardSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)

    @property
    def query_prompt_name(self) -> str:
        """Prompt name under which the query instruction is saved with a sentence-transformers model."""
        return f"{self.name}_query"

    @property
    def key_prompt_name(self) -> str:
        """Prompt name under which the key instruction is saved with a sentence-transformers model."""
        return f"{self.name}_key"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("name")
        return data

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], *, source: str = "task table") -> TaskSpec:
        """Build a spec from a mapping, rejecting unknown keys and values with one clear line."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: task '{name}' must be a mapping, got {type(data).__name__}")
        if not name or not str(name).replace("-", "_").isidentifier():
            raise UserError(f"{source}: invalid task name {name!r}", hint="use letters, digits, '_' or '-'")
        data = dict(data)
        nested: dict[str, Any] = {}
        for key, klass in (("reward", RewardSpec), ("training", TrainingSpec), ("evaluation", EvaluationSpec)):
            nested[key] = _build(klass, data.pop(key, {}) or {}, f"{source}: task '{name}' {key}")
        for required in ("query_instruction", "key_instruction"):
            if not isinstance(data.get(required), str):
                raise UserError(f"{source}: task '{name}' needs a string '{required}'")
        spec = _build(cls, {"name": str(name), **data, **nested}, f"{source}: task '{name}'")
        spec.validate(source)
        return spec

    def validate(self, source: str = "task table") -> None:
        values = {
            "candidates": self.candidates,
            "reward.kind": self.reward.kind,
            "reward.key_order": self.reward.key_order,
            "training.positive": self.training.positive,
            "training.negatives": self.training.negatives,
            "training.positive_rank": self.training.positive_rank,
            "evaluation.option_score": self.evaluation.option_score,
            "query_truncation": self.query_truncation,
        }
        for key, value in values.items():
            if value not in _CHOICES[key]:
                raise UserError(
                    f"{source}: task '{self.name}' field '{key}' is {value!r}",
                    hint=f"choose one of {', '.join(_CHOICES[key])}",
                )
        losses = known_losses()
        if self.training.loss not in losses:
            raise UserError(
                f"{source}: task '{self.name}' field 'training.loss' is {self.training.loss!r}",
                hint=f"choose one of {', '.join(losses)}, or register your loss first (register_loss)",
            )
        max_samples = self.training.max_sample_num
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
        ):
            raise UserError(
                f"{source}: task '{self.name}' field 'training.max_sample_num' is {max_samples!r}",
                hint="give a positive whole number, or null to keep every record",
            )
        tokens = self.query_max_tokens
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise UserError(
                f"{source}: task '{self.name}' field 'query_max_tokens' is {tokens!r}",
                hint="give a positive whole number of tokens, or null for the model's whole query budget",
            )
        tau = self.training.temperature
        if tau is not None and (
            isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 < tau < float("inf")
        ):
            raise UserError(
                f"{source}: task '{self.name}' field 'training.temperature' is {tau!r}",
                hint="give a positive number (0.01 is the reference's), or null to use the run's --temperature",
            )
        if self.reward.kind == "template" and not self.reward.template:
            raise UserError(f"{source}: task '{self.name}' has reward kind 'template' but no reward.template")
