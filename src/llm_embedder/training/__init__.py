"""Training LLM-Embedder: multi-task instruction fine-tuning with reward distillation and homogeneous batches.

``train(config) -> output folder`` is the entry point; the pieces (losses, group sampling, the batch sampler, the
trainer) are usable on their own.

The names below are imported on first use (PEP 562): the task table validates loss names against
:data:`llm_embedder.training.losses.LOSSES` while the data layer is still being imported, so importing this package
must not pull in the data-reading modules (``sampling``, ``dataset``) eagerly.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_embedder.training.config import DataConfig, DatasetConfig, ModelConfig, TrainConfig, TrainingConfig
    from llm_embedder.training.losses import (
        ContrastiveLoss,
        GroupLoss,
        KLDistillationLoss,
        MultiTaskLoss,
        StabilizedDistillationLoss,
        WeightedLoss,
    )
    from llm_embedder.training.sampler import BatchMixing, HomogeneousBatchSampler, SampleRef
    from llm_embedder.training.sampling import GroupSampler, NegativeRule, PositiveRule

_LAZY = {
    "DataConfig": "config",
    "DatasetConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "TrainingConfig": "config",
    "ContrastiveLoss": "losses",
    "GroupLoss": "losses",
    "KLDistillationLoss": "losses",
    "MultiTaskLoss": "losses",
    "StabilizedDistillationLoss": "losses",
    "WeightedLoss": "losses",
    "BatchMixing": "sampler",
    "HomogeneousBatchSampler": "sampler",
    "SampleRef": "sampler",
    "GroupSampler": "sampling",
    "NegativeRule": "sampling",
    "PositiveRule": "sampling",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"llm_embedder.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(config: TrainConfig | Mapping[str, Any] | str | Path, **kwargs: Any) -> str:
    """Train and return the output folder; see :func:`llm_embedder.training.trainer.train` (imported lazily:
    it pulls in the Hugging Face trainer stack)."""
    from llm_embedder.training.trainer import train as _train

    return _train(config, **kwargs)


__all__ = [
    "BatchMixing",
    "ContrastiveLoss",
    "DataConfig",
    "DatasetConfig",
    "GroupLoss",
    "GroupSampler",
    "HomogeneousBatchSampler",
    "KLDistillationLoss",
    "ModelConfig",
    "MultiTaskLoss",
    "NegativeRule",
    "PositiveRule",
    "SampleRef",
    "StabilizedDistillationLoss",
    "TrainConfig",
    "TrainingConfig",
    "WeightedLoss",
    "train",
]
