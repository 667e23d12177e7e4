"""The losses of LLM-Embedder (one file each), all built on :class:`~.base.GroupLoss`.

``LOSSES`` maps the names used in the task table (``training.loss``) to the classes; a user may register a
:class:`GroupLoss` subclass of their own under a new name.
"""

from llm_embedder.training.losses.base import DEFAULT_TEMPERATURE, GroupLoss, GroupScores, split_labels
from llm_embedder.training.losses.contrastive import ContrastiveLoss
from llm_embedder.training.losses.kl_distillation import KLDistillationLoss
from llm_embedder.training.losses.multitask import MultiTaskLoss
from llm_embedder.training.losses.stabilized_distillation import StabilizedDistillationLoss
from llm_embedder.training.losses.weighted import WeightedLoss

#: task-table loss name -> class
LOSSES: dict[str, type[GroupLoss]] = {
    "contrastive": ContrastiveLoss,
    "kl_distillation": KLDistillationLoss,
    "stabilized_distillation": StabilizedDistillationLoss,
}

__all__ = [
    "DEFAULT_TEMPERATURE",
    "LOSSES",
    "ContrastiveLoss",
    "GroupLoss",
    "GroupScores",
    "KLDistillationLoss",
    "MultiTaskLoss",
    "StabilizedDistillationLoss",
    "WeightedLoss",
    "split_labels",
]
