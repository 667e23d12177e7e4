"""The losses of LLM-Embedder (one file each), all built on :class:`~.base.GroupLoss`.

``LOSSES`` maps the names used in the task table (``training.loss``) to the classes, and is the ONE source of valid
names (``TaskSpec.validate`` reads it); :func:`register_loss` adds a :class:`GroupLoss` subclass of one's own::

    register_loss("my_loss", MyLoss)   # then a task (or --tasks file) may say `training: {loss: my_loss}`

A registered class is built as ``cls(temperature=tau)`` and sees every step through :meth:`GroupLoss.per_query_loss`.
"""

from llm_embedder.errors import UserError
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


def register_loss(name: str, loss: type[GroupLoss], *, overwrite: bool = False) -> type[GroupLoss]:
    """Make ``training.loss: <name>`` in a task table select ``loss`` (a :class:`GroupLoss` subclass)."""
    if not (isinstance(loss, type) and issubclass(loss, GroupLoss)):
        raise UserError(f"loss {name!r} must be a GroupLoss subclass, got {loss!r}")
    if not name or not name.replace("-", "_").isidentifier():
        raise UserError(f"invalid loss name {name!r}", hint="use letters, digits, '_' or '-'")
    if name in LOSSES and LOSSES[name] is not loss and not overwrite:
        raise UserError(f"loss {name!r} is already registered", hint="pass overwrite=True to replace it")
    LOSSES[name] = loss
    return loss


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
    "register_loss",
    "split_labels",
]
