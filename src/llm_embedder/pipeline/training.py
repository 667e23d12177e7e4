"""Stage 3 of the pipeline: train the full recipe and each ablation variant with :func:`llm_embedder.training.train`.

A variant is the recipe's ``train`` section plus a few overrides in the trainer's own flag names, e.g.
``{hard_labels: true}`` (w/o LLM reward), ``{use_instructions: false}`` (w/o instructions), ``{mixed_batches: true}``
(w/o homogeneous in-batch negatives) or ``{distillation: kl}`` (KL instead of stabilized distillation). The
pipeline takes one more key out before the trainer sees the rest: ``tasks``, the subset of tasks the variant trains
on. w/o LLM reward needs it: chat, lrlm and icl have no dataset labels, only the LLM's rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_embedder.pipeline.config import PipelineConfig


def variant_flags(config: PipelineConfig, overrides: dict[str, Any], data: dict[str, str], out: Path) -> dict[str, Any]:
    """The flat ``llm-embedder train`` mapping of one variant."""
    train = dict(config.train)
    flags: dict[str, Any] = {
        "model": None if config.encoder == "default" else config.encoder,
        "data": [f"{task}={path}" for task, path in data.items()],
        "output": str(out),
        "seed": config.seed,
        "resume": (out / "checkpoints").is_dir(),
        **{k: v for k, v in train.items() if v is not None},
    }
    flags.update(overrides)
    return flags


def train_variant(
    config: PipelineConfig, variant: str, overrides: dict[str, Any], data: dict[str, str], out: Path
) -> dict[str, Any]:
    """Train one variant into ``out`` (resuming from its checkpoints when a previous run was killed)."""
    import shutil

    from llm_embedder.training import train
    from llm_embedder.training.run_folder import recover

    recover(out)  # a kill while the trainer published the model: finish that first (it may have moved `out` aside)
    if (out / "llm_embedder.json").is_file() and not (out / "checkpoints").is_dir():
        # a finished model from an older recipe: the stage fingerprint changed, so train again from scratch
        shutil.rmtree(out)
    path = train(variant_flags(config, overrides, data, out))
    return {"variant": variant, "model": str(path)}
