"""What every LLM-Embedder loss shares: embed a step's queries and key groups, score them, reduce per query.

A training step holds ``n`` queries per process, each with a group of ``G`` keys laid out as
``[positive, negative_1, ..., negative_{G-1}]`` (the ``key`` column is ``n * G`` texts long, group after group).
:class:`GroupLoss` turns the two columns into a :class:`GroupScores` - the cosine similarity of every local query
with every key of the step, gathered over all processes with a differentiable ``all_gather`` - and a subclass
only says how one query's loss follows from its row (:meth:`GroupLoss.per_query_loss`). Because the losses are
pure functions of :class:`GroupScores`, they combine (:class:`~.weighted.WeightedLoss`), route per task
(:class:`~.multitask.MultiTaskLoss`) and gradient-cache alike.

Gradient caching (GradCache, Gao et al. 2021, arXiv 2101.06983) comes from sentence-transformers'
``CachedLossMixin``: embed in mini-batches without a graph, compute the loss on the detached embeddings, then
re-embed chunk by chunk in the backward pass and push the cached embedding gradients through. It is switched on by
``mini_batch_size`` and gives the same loss and gradients as the plain path (tested), for every loss here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.util import all_gather, all_gather_with_grad, get_rank
from sentence_transformers.util.environment import is_dist_initialized
from torch import Tensor, nn

#: the student temperature of the paper (tau = 0.01 on cosine similarities)
DEFAULT_TEMPERATURE = 0.01


@dataclass
class GroupScores:
    """The similarities a loss needs, for ``n`` local queries of one step.

    Attributes:
        scores: ``(n, K)`` cosine similarity of each local query with each of the ``K`` keys of the step (all
            processes; ``K = total queries x G``).
        group_start: ``(n,)`` column of each query's first key (its positive); its group spans
            ``group_start .. group_start + G - 1``.
        group_size: ``G``.
        teacher_scores: ``(n, G)`` rewards of each query's own keys in the group's order, or ``None``.
        excluded: ``(n, K)`` True on keys of OTHER queries that are no negatives of this one - the same text as one
            of its own keys or labelled positives (:func:`duplicate_keys`); ``None``: every other key is one, as in
            the reference.
    """

    scores: Tensor
    group_start: Tensor
    group_size: int
    teacher_scores: Tensor | None = None
    excluded: Tensor | None = None

    @property
    def own_columns(self) -> Tensor:
        """``(n, G)`` column indices of each query's own group."""
        offsets = torch.arange(self.group_size, device=self.scores.device)
        return self.group_start[:, None] + offsets[None, :]

    def own(self) -> Tensor:
        """``(n, G)`` similarities of each query with its own group, positive first."""
        return self.scores.gather(1, self.own_columns)

    def own_mask(self) -> Tensor:
        """``(n, K)`` True on each query's own group."""
        mask = torch.zeros_like(self.scores, dtype=torch.bool)
        return mask.scatter(1, self.own_columns, True)

    def not_other_negatives(self) -> Tensor:
        """``(n, K)`` True on every key that is not an in-batch negative of the query: its own group, and the
        ``excluded`` duplicates of its own keys in other groups."""
        own = self.own_mask()
        return own if self.excluded is None else own | self.excluded

    @property
    def has_other_keys(self) -> bool:
        """Whether the step holds keys of other queries (in-batch negatives)."""
        return self.scores.shape[1] > self.group_size

    def select(self, rows: Tensor) -> GroupScores:
        """The same step restricted to some queries (all keys stay)."""
        return GroupScores(
            scores=self.scores[rows],
            group_start=self.group_start[rows],
            group_size=self.group_size,
            teacher_scores=None if self.teacher_scores is None else self.teacher_scores[rows],
            excluded=None if self.excluded is None else self.excluded[rows],
        )

    def require_teacher_scores(self, who: str) -> Tensor:
        if self.teacher_scores is None:
            raise ValueError(f"{who} needs teacher scores (labels) for every query, got none")
        if self.teacher_scores.shape != (self.scores.shape[0], self.group_size):
            raise ValueError(
                f"{who}: teacher scores have shape {tuple(self.teacher_scores.shape)}, "
                f"expected {(self.scores.shape[0], self.group_size)}"
            )
        return self.teacher_scores.to(self.scores.dtype)


def duplicate_keys(key_ids: Tensor, own_ids: Tensor, own: Tensor) -> Tensor:
    """``(n, K)`` True where a key of ANOTHER query's group is one of this query's own texts.

    ``key_ids``: ``(K,)`` text ids of every key of the step (all processes, group order); ``own_ids``: ``(n, M)`` the
    ids of each local query's own keys and labelled positives (padded by repeating one of them); ``own``: the
    ``(n, K)`` own-group mask, never excluded. Why: records of one conversation, document or API family share
    passages, so a query can meet its own positive - or another passage labelled relevant to it - as another
    query's key, and InfoNCE would push it away as a negative (convsearch: 7.5% of the recipe's queries per step,
    tool 2.7%; docs/results.md). The ids are stable text hashes (:func:`~llm_embedder.training.collator.text_ids`).
    """
    same = (key_ids.to(own_ids.device)[None, :, None] == own_ids[:, None, :]).any(dim=2)
    return same & ~own


def split_labels(labels: Any) -> dict[str, Tensor | None]:
    """``{"teacher_scores", "task", "query_order", "key_order", "key_ids", "own_ids"}`` from a collator's labels.

    Accepted: ``None``; a ``(n, G)`` tensor of teacher scores (the sentence-transformers convention); or a mapping
    with any of: ``teacher_scores``; ``task`` (per-query task index, read by :class:`~.multitask.MultiTaskLoss`);
    ``query_order`` / ``key_order`` (the rows of a column were sorted, e.g. by length: ``embeddings[order]`` puts
    them back in group order); ``key_ids`` / ``own_ids`` (text ids of the keys in group order and of each query's
    own texts: in-batch duplicates are then no negatives, see :func:`duplicate_keys`).
    """
    names = ("teacher_scores", "task", "query_order", "key_order", "key_ids", "own_ids")
    if labels is None:
        return dict.fromkeys(names)
    if isinstance(labels, Tensor):
        return {**dict.fromkeys(names), "teacher_scores": labels}
    if isinstance(labels, Mapping):
        return {name: labels.get(name) for name in names}
    raise TypeError(f"labels must be None, a tensor or a mapping, got {type(labels).__name__}")


class GroupLoss(CachedLossMixin, nn.Module):
    """Base class: two input columns (queries, key groups) -> per-query losses -> their mean.

    Args:
        model: the SentenceTransformer being trained. May be ``None`` for a loss used only as a part of
            :class:`~.weighted.WeightedLoss` or :class:`~.multitask.MultiTaskLoss` (those embed once for all parts).
        temperature: student temperature ``tau``; similarities are divided by it (paper: 0.01).
        mini_batch_size: embed this many texts at a time with gradient caching; ``None`` embeds the whole column
            in one pass with a full graph (more memory, a bit faster).
        gather_across_devices: score local queries against the keys of every process (all_gather with gradient),
            as the paper does; off, each process only sees its own keys.
        show_progress_bar: show the gradient-cache mini-batches.

    Inputs:
        ``sentence_features = [query_features, key_features]`` where the key column has ``n * G`` rows, group after
        group with the positive first; ``labels``: see :func:`split_labels`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1 or None, got {mini_batch_size}")
        self.model = model
        self.temperature = float(temperature)
        self.mini_batch_size = mini_batch_size  # type: ignore[assignment]
        self.gather_across_devices = gather_across_devices
        self.show_progress_bar = show_progress_bar

    # CachedLossMixin declares this as a class constant; here it depends on the instance.
    @property
    def uses_gradient_cache(self) -> bool:  # type: ignore[override]
        return self.mini_batch_size is not None

    # ------------------------------------------------------------------ what subclasses provide
    def per_query_loss(self, group: GroupScores) -> Tensor:
        """``(n,)`` loss of each local query."""
        raise NotImplementedError

    # ------------------------------------------------------------------ machinery
    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Any = None) -> Tensor:
        features = list(sentence_features)
        if len(features) != 2:
            raise ValueError(
                f"{type(self).__name__} expects 2 input columns (queries, key groups), got {len(features)}"
            )
        if self.model is None:
            raise ValueError(
                f"{type(self).__name__} was built without a model; it can only be used inside another loss"
            )
        if self.mini_batch_size is not None:
            return self.forward_cached(features, labels)
        reps = [[self.model(column)["sentence_embedding"]] for column in features]
        return self.calculate_loss(reps, labels)

    def calculate_loss(self, reps: list[list[Tensor]], labels: Any = None, *, with_backward: bool = False) -> Tensor:
        """The mean per-query loss from the (mini-batched) embeddings of the two columns."""
        parts = split_labels(labels)
        queries = torch.cat(reps[0])
        keys = torch.cat(reps[1])
        if parts["query_order"] is not None:
            queries = queries[parts["query_order"].to(queries.device)]
        if parts["key_order"] is not None:
            keys = keys[parts["key_order"].to(keys.device)]
        group = self.score(queries, keys, parts["teacher_scores"], key_ids=parts["key_ids"], own_ids=parts["own_ids"])
        loss = self.objective(group, parts["task"], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def objective(self, group: GroupScores, task_ids: Tensor | None, labels: Any) -> Tensor:
        """The step's loss from its scores; a loss that reads more of the labels (the anchor term) extends it."""
        return self.reduce(group, task_ids)

    def reduce(self, group: GroupScores, task_ids: Tensor | None) -> Tensor:
        """Mean over the local queries (:class:`~.multitask.MultiTaskLoss` routes by ``task_ids`` first)."""
        return self.per_query_loss(group).mean()

    def score(
        self,
        queries: Tensor,
        keys: Tensor,
        teacher_scores: Tensor | None = None,
        *,
        key_ids: Tensor | None = None,
        own_ids: Tensor | None = None,
    ) -> GroupScores:
        """Cosine similarities of the local queries with all keys of the step (gathered over processes); with the
        keys' text ids and each query's own (``key_ids`` / ``own_ids``), the in-batch duplicates marked
        ``excluded`` (:func:`duplicate_keys`)."""
        n = queries.shape[0]
        if n == 0 or keys.shape[0] % n:
            raise ValueError(f"the key column has {keys.shape[0]} rows, not a multiple of the {n} queries")
        group_size = keys.shape[0] // n
        offset = 0
        # at least float32: with tau = 0.01, bf16 similarities would be too coarse for the softmax
        dtype = torch.promote_types(queries.dtype, torch.float32)
        queries = F.normalize(queries.to(dtype), dim=-1)
        keys = F.normalize(keys.to(dtype), dim=-1)
        dedup = key_ids is not None and own_ids is not None
        if dedup:
            key_ids = key_ids.to(keys.device)
        if self.gather_across_devices and is_dist_initialized():
            keys = all_gather_with_grad(keys)
            offset = get_rank() * n * group_size
            if dedup:
                key_ids = all_gather(key_ids)
        scores = queries @ keys.T
        group_start = offset + torch.arange(n, device=scores.device) * group_size
        if teacher_scores is not None:
            teacher_scores = teacher_scores.to(device=scores.device, dtype=scores.dtype)
        group = GroupScores(scores, group_start, group_size, teacher_scores)
        if dedup:
            group.excluded = duplicate_keys(key_ids, own_ids.to(scores.device), group.own_mask())
        return group

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "mini_batch_size": self.mini_batch_size,
            "gather_across_devices": self.gather_across_devices,
        }
