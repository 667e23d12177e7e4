"""One loss module for a multi-task step: each query gets its task's loss, all keys of the step stay candidates."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from llm_embedder.training.losses.base import GroupLoss, GroupScores


class MultiTaskLoss(GroupLoss):
    r"""Routes every query to the loss of its task; the mean is over all local queries.

    .. math::

        \mathcal{L} = \frac{1}{n} \sum_{i=1}^{n} \mathcal{L}_{\mathrm{task}(q_i)}(q_i)

    With homogeneous batches (the default of the trainer) every step holds one task, so this is simply that task's
    loss; with mixed batches (the "w/o homogeneous in-batch negatives" ablation) queries of different tasks share a
    step and see each other's keys as negatives, exactly what the ablation measures. Per-task behaviour comes from
    the task table (see :func:`llm_embedder.training.task_losses.build_task_loss`), never from branches here.

    Args:
        model: the SentenceTransformer.
        losses: ``{task name: loss}``; the order defines the task ids the collator writes into the labels.
        mini_batch_size / gather_across_devices / show_progress_bar: see :class:`GroupLoss`.

    Inputs:
        labels ``{"task": (n,) task ids, "teacher_scores": (n, G) (when a task needs them)}``; without task ids
        every query is taken to be of the first task.

    Example::

        >>> import torch
        >>> from llm_embedder.training.losses import ContrastiveLoss, KLDistillationLoss, MultiTaskLoss
        >>> loss = MultiTaskLoss(losses={"tool": ContrastiveLoss(), "chat": KLDistillationLoss()})
        >>> q, k = torch.eye(2), torch.eye(2).repeat_interleave(2, dim=0)
        >>> labels = {"task": torch.tensor([0, 1]), "teacher_scores": torch.tensor([[0.0, 0.0], [1.0, 0.0]])}
        >>> loss.calculate_loss([[q], [k]], labels).shape
        torch.Size([])
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        losses: Mapping[str, GroupLoss],
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
        if not losses:
            raise ValueError("MultiTaskLoss needs at least one task loss")
        self.task_names = list(losses)
        self.losses = nn.ModuleDict(dict(losses))

    def task_id(self, task: str) -> int:
        return self.task_names.index(task)

    def reduce(self, group: GroupScores, task_ids: Tensor | None) -> Tensor:
        return self.per_query_loss(group, task_ids).mean()

    def per_query_loss(self, group: GroupScores, task_ids: Tensor | None = None) -> Tensor:  # type: ignore[override]
        n = group.scores.shape[0]
        if task_ids is None:
            task_ids = torch.zeros(n, dtype=torch.long, device=group.scores.device)
        task_ids = task_ids.to(group.scores.device)
        present = torch.unique(task_ids).tolist()
        if len(present) == 1:
            return self.losses[self.task_names[int(present[0])]].per_query_loss(group)
        out = group.scores.new_zeros(n)
        for task_id in present:
            rows = (task_ids == task_id).nonzero(as_tuple=True)[0]
            values = self.losses[self.task_names[int(task_id)]].per_query_loss(group.select(rows))
            out = out.index_copy(0, rows, values)
        return out

    def get_config_dict(self) -> dict[str, object]:
        return {
            **super().get_config_dict(),
            "losses": {
                name: {"loss": type(loss).__name__, **loss.get_config_dict()} for name, loss in self.losses.items()
            },
        }
