"""What a task is: instructions, key template, reward, training and evaluation settings.

A :class:`TaskSpec` is plain data; every part of the toolkit (embedder, reward scorer, trainer, evaluator) reads
its behaviour from it instead of branching on task names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from llm_embedder.errors import UserError
from llm_embedder.utils.dataclass_build import build_dataclass as _build

CandidateSource = Literal["pos_neg", "history"]
RewardKind = Literal["template", "lrlm", "none"]
LossName = Literal["stabilized_distillation", "kl_distillation", "contrastive"]
PositiveSampling = Literal["first", "random", "teacher"]
NegativeSampling = Literal["random", "first", "teacher"]
TruncationSide = Literal["right", "left"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "candidates": ("pos_neg", "history"),
    "reward.kind": ("template", "lrlm", "none"),
    "training.loss": ("stabilized_distillation", "kl_distillation", "contrastive"),
    "training.positive": ("first", "random", "teacher"),
    "training.negatives": ("random", "first", "teacher"),
    "query_truncation": ("right", "left"),
}


@dataclass
class RewardSpec:
    """How the LLM reward of a candidate is computed for this task."""

    kind: RewardKind = "none"
    template: str | None = None
    needs_answers: bool = False


@dataclass
class TrainingSpec:
    """Loss and group-sampling defaults of a task (the reference's choices)."""

    loss: LossName = "contrastive"
    contrastive_weight: float = 1.0
    distill_weight: float = 0.0
    teacher_temperature: float = 1.0
    stabilized_alpha: float = 1.0
    positive: PositiveSampling = "first"
    negatives: NegativeSampling = "random"
    min_score_margin: float = 0.0

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
            "training.loss": self.training.loss,
            "training.positive": self.training.positive,
            "training.negatives": self.training.negatives,
            "query_truncation": self.query_truncation,
        }
        for key, value in values.items():
            if value not in _CHOICES[key]:
                raise UserError(
                    f"{source}: task '{self.name}' field '{key}' is {value!r}",
                    hint=f"choose one of {', '.join(_CHOICES[key])}",
                )
        if self.reward.kind == "template" and not self.reward.template:
            raise UserError(f"{source}: task '{self.name}' has reward kind 'template' but no reward.template")
