"""Stage 3 of the pipeline: train the full recipe and each ablation variant with :func:`llm_embedder.training.train`.

A variant is the recipe's ``train`` section plus a few overrides in the trainer's own flag names, e.g.
``{hard_labels: true}`` (w/o LLM reward), ``{use_instructions: false}`` (w/o instructions), ``{mixed_batches: true}``
(w/o homogeneous in-batch negatives), ``{distillation: kl}`` (KL instead of stabilized distillation) or
``{tasks_file: tasks/qa-plain.yaml}`` (task definitions changed for this variant, resolved against the recipe's
folder like the data paths). The pipeline takes one more key out before the trainer sees the rest: ``tasks``, the
subset of tasks the variant trains on. w/o LLM reward needs it: chat, lrlm and icl have no dataset labels, only
the LLM's rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.pipeline.config import PipelineConfig
from llm_embedder.utils.paths import remove_tree_inside


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
    tasks_file = variant_tasks_file(config, overrides)
    if tasks_file is not None:
        flags["tasks_file"] = str(tasks_file)
    return flags


def variant_tasks_file(config: PipelineConfig, overrides: dict[str, Any]) -> Path | None:
    """The task file a variant names, resolved as its data paths are: against the recipe's folder
    (``recipes/tasks/...``), not the working directory."""
    return config.resolve(overrides["tasks_file"]) if overrides.get("tasks_file") else None


def check_variants(config: PipelineConfig, where: str) -> None:
    """Build and validate every variant's training config now, with placeholder data paths.

    Without this a type error in ``train:`` or in a variant surfaces when the train stage starts, after build and
    score (an hour with ``recipes/reproduce.yaml``).
    """
    from llm_embedder.tasks import TASKS
    from llm_embedder.training.config import TrainConfig
    from llm_embedder.utils.dataclass_build import check_field_types

    root = Path(config.output_dir) / "models"
    for name, variant in config.variants.items():
        overrides = {k: v for k, v in variant.items() if k != "tasks"}
        tasks = variant.get("tasks") or list(config.tasks)
        data = {task: f"data/{task}/train.jsonl" for task in tasks}
        source = f"{where}: variants.{name}"
        train = TrainConfig.from_dict(variant_flags(config, overrides, data, root / name), source=source)
        for section in (train.model, train.data, train.training):
            check_field_types(section, source)
        try:
            train.validate()
            if train.data.tasks_file:  # a missing or malformed task file, now rather than after scoring
                TASKS.copy().load_file(train.data.tasks_file)
        except UserError as exc:  # the message says what; add which variant of which recipe
            raise UserError(f"{source}: {exc.line()}") from None


def train_variant(
    config: PipelineConfig, variant: str, overrides: dict[str, Any], data: dict[str, str], out: Path
) -> dict[str, Any]:
    """Train one variant into ``out`` (resuming from its checkpoints when a previous run was killed)."""
    from llm_embedder.training import train
    from llm_embedder.training.run_folder import recover

    recover(out)  # a kill while the trainer published the model: finish that first (it may have moved `out` aside)
    if (out / "llm_embedder.json").is_file() and not (out / "checkpoints").is_dir():
        # a finished model from an older recipe: the stage fingerprint changed, so train again from scratch
        remove_tree_inside(out, config.output_dir)
    path = train(variant_flags(config, overrides, data, out))
    return {"variant": variant, "model": str(path)}
