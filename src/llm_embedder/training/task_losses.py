"""From the task table to training behaviour: the effective :class:`TrainingSpec` of a task and its loss.

The task table (``tasks/builtin.yaml``) says per task which loss, which weights and temperatures, how groups are
sampled. A run may change that for the paper's ablations - one function each, no task names in the code:

* ``hard_labels`` ("w/o LLM reward"): contrastive only, on the labelled positive; teacher-score rules fall back to
  ``first`` / ``random`` and no margin filter applies;
* ``distillation`` ("KL instead of stabilized"): every distillation loss becomes the given one;
* ``loss_overrides``: ``{task: loss name}`` (or, from Python, a :class:`GroupLoss` subclass / a callable
  ``(TrainingSpec, temperature) -> GroupLoss``; the escape hatch).

A distillation loss that the table weights 0 (a contrastive task switched to distillation) gets weight 1.0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.tasks.spec import TrainingSpec
from llm_embedder.training.config import DISTILLATIONS
from llm_embedder.training.group_sampler import GroupSampler
from llm_embedder.training.losses import (
    LOSSES,
    ContrastiveLoss,
    GroupLoss,
    KLDistillationLoss,
    StabilizedDistillationLoss,
    WeightedLoss,
)

LossFactory = Callable[[TrainingSpec, float], GroupLoss]


def resolve_training_spec(
    spec: TrainingSpec,
    *,
    task: str,
    hard_labels: bool = False,
    distillation: str | None = None,
    loss_overrides: Mapping[str, Any] | None = None,
) -> TrainingSpec:
    """The task's training settings after this run's switches (a copy; the table is not changed)."""
    spec = dataclasses.replace(spec)
    if distillation is not None and spec.loss != "contrastive":
        if distillation not in DISTILLATIONS:
            raise UserError(f"unknown distillation {distillation!r}", hint=f"choose one of {', '.join(DISTILLATIONS)}")
        spec.loss = DISTILLATIONS[distillation]  # type: ignore[assignment]
    override = (loss_overrides or {}).get(task)
    if isinstance(override, str):
        name = DISTILLATIONS.get(override, override)
        if name not in LOSSES:
            raise UserError(
                f"unknown loss {override!r} for task '{task}'",
                hint=f"choose one of {', '.join(LOSSES)} (or kl / stabilized)",
            )
        spec.loss = name  # type: ignore[assignment]
    if spec.loss != "contrastive" and spec.distill_weight <= 0:
        spec.distill_weight = 1.0
    if hard_labels:
        spec.loss = "contrastive"
        spec.contrastive_weight = 1.0
        spec.distill_weight = 0.0
        spec.min_score_margin = 0.0
        if spec.positive == "teacher":
            spec.positive = "first"
        if spec.negatives == "teacher":
            spec.negatives = "random"
    return spec


def uses_teacher_scores(spec: TrainingSpec) -> bool:
    """Whether this (resolved) spec reads teacher scores at all."""
    return spec.needs_teacher_scores or spec.negatives == "teacher" or spec.min_score_margin > 0


def build_task_loss(spec: TrainingSpec, *, temperature: float = 0.01, override: Any = None) -> GroupLoss:
    """The loss of one task (without a model: it is a part of the trainer's :class:`MultiTaskLoss`).

    ``contrastive`` -> InfoNCE; a distillation loss -> ``distill_weight * distill`` plus
    ``contrastive_weight * InfoNCE`` when that weight is > 0. ``override`` (a class or a callable) replaces it.
    ``temperature`` is the run's; the task's own ``training.temperature``, when set, takes its place.
    """
    if spec.temperature is not None:
        temperature = float(spec.temperature)
    if override is not None and not isinstance(override, str):
        if isinstance(override, type) and issubclass(override, GroupLoss):
            return override(temperature=temperature)
        if callable(override):
            return override(spec, temperature)
        raise UserError(f"loss override {override!r} is neither a loss name, a GroupLoss class nor a callable")
    if spec.loss == "contrastive":
        weight = spec.contrastive_weight if spec.contrastive_weight > 0 else 1.0
        contrastive = ContrastiveLoss(temperature=temperature)
        return contrastive if weight == 1.0 else WeightedLoss(parts=[(weight, contrastive)])
    distill: GroupLoss
    if spec.loss == "kl_distillation":
        distill = KLDistillationLoss(teacher_temperature=spec.teacher_temperature, temperature=temperature)
    elif spec.loss == "stabilized_distillation":
        distill = StabilizedDistillationLoss(
            alpha=spec.stabilized_alpha, positive_rank=spec.positive_rank, temperature=temperature
        )
    else:
        distill = LOSSES[spec.loss](temperature=temperature)
    distill_weight = spec.distill_weight if spec.distill_weight > 0 else 1.0
    parts: list[tuple[float, GroupLoss]] = []
    if spec.contrastive_weight > 0:
        parts.append((spec.contrastive_weight, ContrastiveLoss(temperature=temperature)))
    parts.append((distill_weight, distill))
    if len(parts) == 1 and distill_weight == 1.0:
        return distill
    return WeightedLoss(parts=parts)


def build_group_sampler(spec: TrainingSpec, *, group_size: int, repeat: bool = True) -> GroupSampler:
    """The group sampler of a (resolved) spec."""
    return GroupSampler(
        group_size,
        positive=spec.positive,
        negatives=spec.negatives,
        repeat=repeat,
        min_score_margin=spec.min_score_margin,
    )


def describe_loss(loss: GroupLoss) -> str:
    """A short human-readable formula of a task loss, for logs and the model card."""
    if isinstance(loss, WeightedLoss):
        return " + ".join(f"{w:g} * {describe_loss(p)}" for w, p in zip(loss.weights, loss.parts, strict=True) if w)
    if isinstance(loss, KLDistillationLoss):
        return f"KL distillation (teacher T={loss.teacher_temperature:g}, tau={loss.temperature:g})"
    if isinstance(loss, StabilizedDistillationLoss):
        return (
            f"stabilized distillation (alpha={loss.alpha:g}, positive rank: {loss.positive_rank}, "
            f"tau={loss.temperature:g})"
        )
    if isinstance(loss, ContrastiveLoss):
        return f"InfoNCE over all in-batch keys (tau={loss.temperature:g})"
    return type(loss).__name__
