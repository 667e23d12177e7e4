"""Stabilized (rank-aware) distillation: the paper's device against fluctuating LLM rewards (qa, icl)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_embedder.training.losses.base import DEFAULT_TEMPERATURE, GroupLoss, GroupScores

#: ``positive_rank`` values: ``reference`` keeps the labelled positive first, ``reward`` ranks it by its reward
POSITIVE_RANKS = ("reference", "reward")


class StabilizedDistillationLoss(GroupLoss):
    r"""Each candidate competes only with the candidates the LLM ranked at or below it, plus in-batch keys.

    Sort the query's group by reward, :math:`p_1 \ge p_2 \ge \ldots \ge p_G`, and let :math:`\mathcal{O}` be all
    keys of the other queries of the step (on every process; under ``in_batch_duplicates: mask`` without the
    duplicates of the query's own texts, ``GroupScores.excluded``). With weights :math:`w = \mathrm{softmax}(r/\alpha)`
    over the group:

    .. math::

        \mathcal{L}(q) = -\sum_{i=1}^{G} w_i \log
            \frac{\exp(s(q, p_i)/\tau)}
                 {\sum_{k \in \{p_i, \ldots, p_G\} \cup \mathcal{O}} \exp(s(q, k)/\tau)}

    averaged over queries. The fluctuating absolute reward only sets the weights; what is distilled is the order.
    With a one-hot reward (weights concentrated on the positive) this is exactly InfoNCE
    (:class:`~.contrastive.ContrastiveLoss`). Ties in the reward keep the group's order (stable sort).

    Which order, ``positive_rank``:

    * ``"reference"`` (default) - the labelled positive (the group's first key) stays :math:`p_1`, and only the
      negatives are sorted by reward, as the authors' code does (it sorts the negatives when it builds the group).
      The positive then competes with every other candidate even when the LLM preferred a negative: the label
      stays the anchor and the reward orders the rest.
    * ``"reward"`` - the whole group, positive included, is sorted by reward: a negative the LLM rewarded above
      the positive no longer competes with it. Identical to ``"reference"`` when the positive has the top reward;
      small LLM teachers often do not give it (SmolLM2 ranks the gold qa passage first in about half the records).

    Args:
        model: the SentenceTransformer (``None`` when used as a part of another loss).
        alpha: temperature of the reward weights :math:`\alpha` (the reference uses none, i.e. 1.0).
        positive_rank: ``"reference"`` or ``"reward"`` (see above).
        temperature: student temperature :math:`\tau` (0.01).
        mini_batch_size / gather_across_devices / show_progress_bar: see :class:`GroupLoss`.

    Inputs:
        +---------------------------------------------------------+---------------------------------------+
        | Inputs                                                  | Labels                                |
        +=========================================================+=======================================+
        | (query, [k_1 ... k_G] per query)                        | teacher scores ``(n, G)``, same order |
        +---------------------------------------------------------+---------------------------------------+

    Example::

        >>> import torch
        >>> from llm_embedder.training.losses import StabilizedDistillationLoss
        >>> loss = StabilizedDistillationLoss(alpha=1e-3, temperature=1.0)
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> reward = torch.tensor([[1.0, 0.0]])  # one-hot after softmax(r / 0.001): InfoNCE
        >>> round(float(loss.calculate_loss([[q], [k]], reward)), 4)
        0.3133

    Paper: Zhang et al., "Retrieve Anything To Augment Large Language Models" (arXiv 2310.07554), Sec. 3.2
    ("stabilized distillation"); the reference implementation is FlagEmbedding ``research/llm_embedder``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        alpha: float = 1.0,
        positive_rank: str = "reference",
        temperature: float = DEFAULT_TEMPERATURE,
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__(
            model,
            temperature=temperature,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
            show_progress_bar=show_progress_bar,
        )
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        if positive_rank not in POSITIVE_RANKS:
            raise ValueError(f"positive_rank must be one of {', '.join(POSITIVE_RANKS)}, got {positive_rank!r}")
        self.positive_rank = positive_rank

    def per_query_loss(self, group: GroupScores) -> Tensor:
        reward = group.require_teacher_scores(type(self).__name__)
        if self.positive_rank == "reward":
            order = torch.argsort(reward, dim=1, descending=True, stable=True)
        else:  # the positive (column 0) first, then the negatives by reward
            negatives = torch.argsort(reward[:, 1:], dim=1, descending=True, stable=True) + 1
            order = torch.cat([torch.zeros_like(negatives[:, :1]), negatives], dim=1)
        ranked_logits = (group.own() / self.temperature).gather(1, order)  # p_1 ... p_G
        weights = F.softmax(reward.gather(1, order) / self.alpha, dim=1)
        # log sum over {p_i ... p_G}: a reversed cumulative logsumexp
        suffix = torch.logcumsumexp(ranked_logits.flip(1), dim=1).flip(1)
        if group.has_other_keys:
            others = (group.scores / self.temperature).masked_fill(group.not_other_negatives(), float("-inf"))
            suffix = torch.logaddexp(suffix, torch.logsumexp(others, dim=1, keepdim=True))
        return -(weights * (ranked_logits - suffix)).sum(dim=1)

    def get_config_dict(self) -> dict[str, object]:
        return {**super().get_config_dict(), "alpha": self.alpha, "positive_rank": self.positive_rank}
