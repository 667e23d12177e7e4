"""InfoNCE over every key of the step (the paper's contrastive loss with cross-device in-batch negatives)."""

from __future__ import annotations

import torch
from torch import Tensor

from llm_embedder.training.losses.base import GroupLoss, GroupScores


class ContrastiveLoss(GroupLoss):
    r"""InfoNCE with the query's positive against ALL keys of the step.

    For query :math:`q` with positive :math:`p` and the set :math:`\mathcal{K}` of every key of the step (its own
    group, every other query's group, on every process):

    .. math::

        \mathcal{L}(q) = -\log \frac{\exp(s(q, p)/\tau)}{\sum_{k \in \mathcal{K}} \exp(s(q, k)/\tau)}

    with :math:`s` the cosine similarity and :math:`\tau = 0.01`. With ``B`` queries of group size ``G`` per step
    (over all processes) every query has ``B * G - 1`` negatives. The loss is averaged over the queries. Under
    ``in_batch_duplicates: mask`` a key of another group with the same text as one of the query's own keys or
    labelled positives leaves :math:`\mathcal{K}` (``GroupScores.excluded``).

    Args:
        model: the SentenceTransformer (``None`` when used as a part of another loss).
        temperature: :math:`\tau`.
        mini_batch_size / gather_across_devices / show_progress_bar: see :class:`GroupLoss`.

    Inputs:
        +---------------------------------------------------------------+-----------------------------+
        | Inputs                                                        | Labels                      |
        +===============================================================+=============================+
        | (query, [positive, negative_1 ... negative_{G-1}] per query)  | none (teacher scores unused)|
        +---------------------------------------------------------------+-----------------------------+

    Example::

        >>> import torch
        >>> from llm_embedder.training.losses import ContrastiveLoss
        >>> loss = ContrastiveLoss()
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # G = 2, positives first
        >>> round(float(loss.calculate_loss([[q], [k]])), 4)  # each positive ties with one other key
        0.6931

    Paper: Zhang et al., "Retrieve Anything To Augment Large Language Models" (arXiv 2310.07554), Sec. 3.2.
    """

    def per_query_loss(self, group: GroupScores) -> Tensor:
        logits = group.scores / self.temperature
        if group.excluded is not None:  # in-batch duplicates of the query's own texts are no negatives
            logits = logits.masked_fill(group.excluded, float("-inf"))
        positive = logits.gather(1, group.group_start[:, None]).squeeze(1)
        return torch.logsumexp(logits, dim=1) - positive
