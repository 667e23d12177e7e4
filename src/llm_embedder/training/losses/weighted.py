"""A weighted sum of group losses computed on ONE set of embeddings (e.g. 0.2 * InfoNCE + 1.0 * distillation)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from llm_embedder.training.losses.base import GroupLoss, GroupScores


class WeightedLoss(GroupLoss):
    r"""``sum_j weight_j * loss_j``, per query, sharing the embeddings and scores of the step.

    .. math::

        \mathcal{L}(q) = \sum_j w_j \, \mathcal{L}_j(q)

    The task table's ``contrastive_weight`` and ``distill_weight`` build one, e.g. ``0.2 * InfoNCE + 1.0 *
    stabilized distillation``. (The reference's per-task configuration trains qa and icl with ``contrastive_weight
    0`` - stabilized distillation alone; its 0.2 is only the command-line fallback for tasks that do not set it, and
    the built-in table follows the per-task value.) The parts are only asked for :meth:`per_query_loss`, so they are
    built without a model; the temperature of each part is its own.

    Args:
        model: the SentenceTransformer (``None`` when this is itself a part of another loss).
        parts: ``[(weight, loss), ...]``.
        mini_batch_size / gather_across_devices / show_progress_bar: see :class:`GroupLoss`.

    Inputs: those of the parts (teacher scores when any part needs them).

    Example::

        >>> import torch
        >>> from llm_embedder.training.losses import ContrastiveLoss, StabilizedDistillationLoss, WeightedLoss
        >>> loss = WeightedLoss(parts=[(0.2, ContrastiveLoss()), (1.0, StabilizedDistillationLoss())])
        >>> q, k = torch.eye(2), torch.eye(2).repeat_interleave(2, dim=0)  # 2 queries, G = 2
        >>> loss.calculate_loss([[q], [k]], torch.tensor([[0.0, -1.0], [0.0, -1.0]])).shape
        torch.Size([])
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        parts: Sequence[tuple[float, GroupLoss]],
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__(
            model,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
            show_progress_bar=show_progress_bar,
        )
        if not parts:
            raise ValueError("WeightedLoss needs at least one part")
        self.weights = [float(weight) for weight, _ in parts]
        self.parts = nn.ModuleList([loss for _, loss in parts])

    def per_query_loss(self, group: GroupScores) -> Tensor:
        total: Tensor | None = None
        for weight, part in zip(self.weights, self.parts, strict=True):
            if weight == 0:
                continue
            value = weight * part.per_query_loss(group)
            total = value if total is None else total + value
        if total is None:
            return group.scores.new_zeros(group.scores.shape[0])
        return total

    def get_config_dict(self) -> dict[str, object]:
        return {
            **super().get_config_dict(),
            "parts": [
                {"weight": weight, "loss": type(part).__name__, **part.get_config_dict()}
                for weight, part in zip(self.weights, self.parts, strict=True)
            ],
        }
