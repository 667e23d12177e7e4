"""Hold the student near the base encoder's own similarities while it learns the tasks (an anchor term).

Why: a small encoder fine-tuned for a few hundred steps on a few thousand groups forgets what made it a good
general retriever. Issue 14 measured it: the six-task recipe left all-MiniLM-L6-v2 BELOW the plain base model on 6
of 8 held-back retrieval sets. The instructions make it worse: prepended to an encoder that was never trained with
them, they cost it up to two thirds of its quality, so the student starts far from where the base is good and must
find its way back from a few thousand examples of six narrow distributions.

The anchor is a self-distillation term. For every step, the FROZEN base model encodes the same queries and keys as
it is meant to be used (plain text: no instructions), and the student (with its instructions) is pulled towards the
base's similarity distribution over ALL keys of the step (its own group and the in-batch negatives):

.. math::

    \\mathcal{L} = \\mathcal{L}_{\\mathrm{task}}
        + \\lambda \\, \\frac{1}{n} \\sum_i \\mathrm{KL}\\big(\\mathrm{softmax}(s^{\\mathrm{base}}_i / \\tau_a)
        \\,\\|\\, \\mathrm{softmax}(s_i / \\tau_a)\\big)

where :math:`s_i` are query i's cosine similarities under the student and :math:`s^{\\mathrm{base}}_i` under the
base on plain text. The LLM rewards move the ranking where they disagree with the base; everywhere else the student
keeps the base's judgement, instruction or not. It is not in the paper (its base, BGE, is large and was trained on
far more data); ``anchor_weight: 0`` (the default of ``llm-embedder train``) is the paper's loss. The recipe that
uses it and the measurement that chose it are in ``docs/results.md`` ("Training check").

The base model is held outside the module tree (never trained, saved or moved by the trainer) and runs in eval
mode without a graph, so the term costs one forward pass of the base per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.util.environment import is_dist_initialized
from torch import Tensor, nn

from llm_embedder.training.losses.base import GroupLoss, GroupScores

#: the label keys the collator writes for the anchor columns' length-sorted rows
ANCHOR_ORDER = ("anchor_query_order", "anchor_key_order")
#: the default temperature of the anchor's two distributions: softer than the student's tau = 0.01, so the term
#: carries the base's whole ranking of a group, not just its favourite key
DEFAULT_ANCHOR_TEMPERATURE = 0.05


def anchor_kl(student: Tensor, base: Tensor, temperature: float) -> Tensor:
    """``(n,)`` KL(softmax(base / t) || softmax(student / t)) of each row (similarities in, nats out)."""
    log_p_base = F.log_softmax(base.to(student.dtype) / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    return (log_p_base.exp() * (log_p_base - log_p_student)).sum(dim=-1)


class AnchoredLoss(GroupLoss):
    """``inner`` (normally the :class:`~.multitask.MultiTaskLoss`) plus ``weight`` x the anchor term above.

    Args:
        model: the SentenceTransformer being trained.
        inner: the task loss, built without a model (this loss embeds once for both parts).
        anchor: the frozen base model (a SentenceTransformer); it is put in eval mode and its parameters frozen.
        weight: lambda; 0 gives ``inner`` alone (the anchor columns are still read, so a step costs the same).
        task_weights: per-task lambda ``{task: weight}`` overriding ``weight`` for the queries of those tasks (the
            task ids of the labels index ``inner.task_names``); e.g. ``{"tool": 0}`` lets tool move freely, where
            the base is weak, while the other tasks stay anchored.
        anchor_temperature: tau_a of both distributions of the term.
        mini_batch_size / gather_across_devices: see :class:`GroupLoss` (gradient caching covers the student; the
            base needs no graph).

    Inputs:
        four columns ``[queries, keys, anchor queries, anchor keys]`` - the last two the same texts without
        instructions (see :class:`~llm_embedder.training.collator.GroupCollator`, ``anchor=True``); labels as
        :func:`~.base.split_labels` plus ``anchor_query_order`` / ``anchor_key_order``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        inner: GroupLoss,
        anchor: nn.Module,
        weight: float,
        task_weights: Mapping[str, float] | None = None,
        anchor_temperature: float = DEFAULT_ANCHOR_TEMPERATURE,
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__(
            model,
            temperature=inner.temperature,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
        )
        if not weight >= 0:
            raise ValueError(f"anchor weight must be >= 0, got {weight}")
        if not anchor_temperature > 0:
            raise ValueError(f"anchor temperature must be > 0, got {anchor_temperature}")
        self.inner = inner
        task_weights = dict(task_weights or {})
        unknown = sorted(set(task_weights) - set(self.task_names))
        if unknown:
            raise ValueError(f"anchor weight given for unknown task(s) {', '.join(unknown)}; tasks: {self.task_names}")
        if any(not value >= 0 for value in task_weights.values()):
            raise ValueError(f"anchor task weights must be >= 0, got {task_weights}")
        anchor.eval()
        for parameter in anchor.parameters():
            parameter.requires_grad_(False)
        # a tuple, not an attribute nn.Module registers: the trainer must not optimise, save or cast the base
        self._anchor = (anchor,)
        self.weight = float(weight)
        self.task_weights = {task: float(value) for task, value in task_weights.items()}
        self.anchor_temperature = float(anchor_temperature)

    @property
    def task_names(self) -> list[str]:
        return list(getattr(self.inner, "task_names", []))

    @property
    def anchor(self) -> nn.Module:
        return self._anchor[0]

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Any = None) -> Tensor:
        features = list(sentence_features)
        if len(features) != 4:
            raise ValueError(
                f"{type(self).__name__} expects 4 input columns (queries, keys, anchor queries, anchor keys), "
                f"got {len(features)}"
            )
        labels = dict(labels) if isinstance(labels, Mapping) else {"teacher_scores": labels}
        labels["anchor_scores"] = self.anchor_scores(features[2], features[3], labels)
        return super().forward(features[:2], labels)

    @torch.no_grad()
    def anchor_scores(self, query_features: dict[str, Tensor], key_features: dict[str, Tensor], labels: Any) -> Tensor:
        """``(n, K)`` cosine similarities of the base model on the plain texts, in the student's column layout."""
        device = query_features["input_ids"].device
        anchor = self.anchor
        if next(anchor.parameters()).device != device:
            anchor.to(device)
        queries = anchor(dict(query_features))["sentence_embedding"].float()
        keys = anchor(dict(key_features))["sentence_embedding"].float()
        query_order, key_order = (labels.get(name) for name in ANCHOR_ORDER)
        if query_order is not None:
            queries = queries[query_order.to(device)]
        if key_order is not None:
            keys = keys[key_order.to(device)]
        queries = F.normalize(queries, dim=-1)
        keys = F.normalize(keys, dim=-1)
        if self.gather_across_devices and is_dist_initialized():
            gathered = [torch.empty_like(keys) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(gathered, keys.contiguous())
            keys = torch.cat(gathered)
        return queries @ keys.T

    def objective(self, group: GroupScores, task_ids: Tensor | None, labels: Any) -> Tensor:
        return self.inner.reduce(group, task_ids) + self.anchor_term(group, labels, task_ids)

    def query_weights(self, task_ids: Tensor | None, n: int, device: torch.device) -> Tensor:
        """``(n,)`` lambda of each local query: its task's weight, else ``weight`` (queries without a task id are of
        the first task, as :class:`~.multitask.MultiTaskLoss` reads them)."""
        per_task = torch.tensor(
            [self.task_weights.get(task, self.weight) for task in self.task_names] or [self.weight], device=device
        )
        if task_ids is None:
            return per_task[0].expand(n)
        return per_task[task_ids.to(device)]

    def anchor_term(self, group: GroupScores, labels: Any, task_ids: Tensor | None = None) -> Tensor:
        """lambda x the anchor KL, averaged over the step's local queries (each weighted by its task's lambda)."""
        base = labels["anchor_scores"] if isinstance(labels, Mapping) else None
        if base is None:
            raise ValueError("AnchoredLoss needs the base model's scores (run it through forward)")
        if base.shape != group.scores.shape:
            raise ValueError(f"anchor scores have shape {tuple(base.shape)}, the student's {tuple(group.scores.shape)}")
        kl = anchor_kl(group.scores, base.to(group.scores.device), self.anchor_temperature)
        return (self.query_weights(task_ids, kl.shape[0], kl.device).to(kl.dtype) * kl).mean()

    def per_query_loss(self, group: GroupScores) -> Tensor:  # pragma: no cover - routed through objective
        raise NotImplementedError("AnchoredLoss needs the anchor scores; use forward/calculate_loss")

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **self.inner.get_config_dict(),
            "anchor_weight": self.weight,
            "anchor_task_weights": dict(self.task_weights),
            "anchor_temperature": self.anchor_temperature,
        }
