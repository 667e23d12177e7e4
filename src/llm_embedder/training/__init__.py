"""Training LLM-Embedder: multi-task instruction fine-tuning with reward distillation and homogeneous batches.

``train(config) -> output folder`` is the entry point; the pieces (losses, group sampling, the batch sampler, the
trainer) are usable on their own.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_embedder.training.batch_sampler import BatchMixing, HomogeneousBatchSampler, SampleRef
from llm_embedder.training.config import DataConfig, DatasetConfig, ModelConfig, TrainConfig, TrainingConfig
from llm_embedder.training.group_sampler import GroupSampler, NegativeRule, PositiveRule
from llm_embedder.training.losses import (
    ContrastiveLoss,
    GroupLoss,
    KLDistillationLoss,
    MultiTaskLoss,
    StabilizedDistillationLoss,
    WeightedLoss,
)


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
