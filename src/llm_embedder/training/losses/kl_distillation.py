"""KL distillation of the LLM's rewards over the query's own group (the paper's choice for chat and lrlm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_embedder.training.losses.base import DEFAULT_TEMPERATURE, GroupLoss, GroupScores


class KLDistillationLoss(GroupLoss):
    r"""KL divergence from the teacher's distribution over the group to the student's.

    For query :math:`q` with group :math:`k_1 \ldots k_G` and teacher rewards :math:`r_1 \ldots r_G`:

    .. math::

        \mathcal{L}(q) = \mathrm{KL}\Big(\mathrm{softmax}(r / T_t) \,\Big\|\,
                         \mathrm{softmax}\big(s(q, k_{1..G}) / \tau\big)\Big)

    averaged over queries ("batchmean"). Only the query's own group enters: the reference uses it for chat and
    lrlm, whose candidates are a per-sample history, so other queries' keys mean nothing to them.

    Args:
        model: the SentenceTransformer (``None`` when used as a part of another loss).
        teacher_temperature: :math:`T_t` (paper: 0.1 for chat and lrlm, 1.0 elsewhere).
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
        >>> from llm_embedder.training.losses import KLDistillationLoss
        >>> loss = KLDistillationLoss(teacher_temperature=1.0, temperature=1.0)
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(float(loss.calculate_loss([[q], [k]], torch.tensor([[1.0, 0.0]]))), 6)  # same distribution
        0.0

    Paper: Zhang et al., arXiv 2310.07554, Sec. 3.2 (reward distillation); Hinton et al. 2015 for KD with
    temperature.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        teacher_temperature: float = 1.0,
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
        if teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
        self.teacher_temperature = float(teacher_temperature)

    def per_query_loss(self, group: GroupScores) -> Tensor:
        teacher = group.require_teacher_scores(type(self).__name__)
        student_log_probs = F.log_softmax(group.own() / self.temperature, dim=1)
        teacher_probs = F.softmax(teacher / self.teacher_temperature, dim=1)
        # xlogy: a teacher probability that underflows to 0 contributes 0, not nan
        return (torch.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs).sum(dim=1)

    def get_config_dict(self) -> dict[str, object]:
        return {**super().get_config_dict(), "teacher_temperature": self.teacher_temperature}
