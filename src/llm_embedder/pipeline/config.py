"""The pipeline recipe: which data per task, which base encoder and LM, how long to train, what to compare.

A recipe is a YAML/JSON file (see ``recipes/``) read into typed dataclasses; unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_embedder.errors import UserError
from llm_embedder.tasks.spec import DEFAULT_MAX_KEY_TOKENS
from llm_embedder.training.config import recipe_section
from llm_embedder.utils.dataclass_build import build_dataclass, check_field_types
from llm_embedder.utils.paths import check_name


@dataclass
class TaskData:
    """Where a task's data comes from: files in the record format, or a built-in generator (``source``)."""

    train: str | None = None
    dev: str | None = None
    corpus: str | None = None
    #: built-in generator instead of files: "stdlib_tools" or "stdlib_lrlm"
    source: str | None = None
    limit_train: int | None = None
    limit_dev: int | None = None
    #: keep at most this many pos+neg candidates per TRAIN record (positives first): the LLM scores every
    #: candidate, so this bounds the scoring cost; history candidates (chat) and dev records are never cut
    max_candidates: int | None = None
    #: extra options for the generator (e.g. chunk_tokens for lrlm)
    options: dict[str, Any] = field(default_factory=dict)
    #: the LLM that scores this task's records instead of the recipe's ``lm`` (a stronger teacher where the
    #: reader's own preferences are noise, e.g. gemma3 for icl); the downstream reader stays ``lm``
    teacher: str | None = None


@dataclass
class ScoreConfig:
    #: None = the LM device's default (lm.likelihood.DEFAULT_TOKEN_BUDGET: 1024 on CPU, 8192 on GPU)
    token_budget: int | None = None
    max_batch_size: int = 64
    max_key_tokens: int = DEFAULT_MAX_KEY_TOKENS
    #: LM precision (``lm.precision``): auto = bf16-mixed where bf16 is native (same rankings as fp32), else fp32
    dtype: str = "auto"
    #: also score the dev records of reward tasks that have no labelled positives (chat, lrlm, icl), so they get
    #: retrieval metrics (relevant = the candidate the LLM rewards most)
    score_dev: bool = True


#: the ``train:`` section is a training recipe (``llm_embedder.training.config.TrainConfig``, the flags of
#: ``llm-embedder train``); these are its defaults at the pipeline's scale, the rest are the trainer's own
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 100,
    "batch_size": 16,
    "group_size": 4,
    "lr": 2e-5,
    "warmup": 0.1,
    "query_max_length": 128,
    "key_max_length": 128,
    "grad_cache_chunk": None,
    "dtype": "fp32",
    "save_steps": 50,
}
#: keys of the ``train:`` section that the pipeline sets itself (per task, per variant): ``seed`` is the recipe's
#: top-level one, which a variant may override (``recipes/six-task.yaml``: ``full_seed1: {<<: *full, seed: 1}``)
TRAIN_RESERVED = ("data", "output", "model", "resume", "seed")


@dataclass
class EvalConfig:
    #: baselines besides the base encoder and the trained variants
    retrievers: list[str] = field(default_factory=lambda: ["bm25"])
    limit: int | None = None
    #: run the LLM-based downstream metrics (perplexity, accuracy ...) besides retrieval metrics
    downstream: bool = True
    #: give the LLM only the first N of the `limit` records (retrieval metrics use all of them)
    downstream_limit: int | None = None


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    output_dir: str = "runs/pipeline"
    encoder: str = "default"
    lm: str = "smollm2"
    seed: int = 0
    tasks: dict[str, TaskData] = field(default_factory=dict)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    train: dict[str, Any] = field(default_factory=lambda: dict(TRAIN_DEFAULTS))
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: name -> training overrides; "full" is the complete recipe, others are ablations (paper Table 4). The key
    #: ``tasks`` (a list) trains that variant on a subset of the tasks, e.g. w/o LLM reward on the labelled ones only
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"full": {}})
    #: folder the relative data paths are resolved against (the recipe file's folder)
    base_dir: str = "."

    def resolve(self, path: str | None) -> Path | None:
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def fingerprint(self, *parts: Any) -> str:
        """A short hash of the given config parts: a stage is redone when its inputs change."""
        blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def select_variants(config: PipelineConfig, names: list[str]) -> PipelineConfig:
    """The recipe with only the named variants, in the recipe's order (``pipeline --variants full``).

    Why: a recipe carries its ablations beside ``full``; who wants the recipe's model alone should not pay for
    training and evaluating the others (each is one more training run). Stages stay keyed by their inputs, so the
    skipped variants train later, in the same folder, when they are asked for.
    """
    wanted = [name.strip() for name in names if name.strip()]
    unknown = [name for name in wanted if name not in config.variants]
    if not wanted or unknown:
        raise UserError(
            f"--variants: unknown variant(s) {', '.join(unknown)}" if unknown else "--variants: no variant named",
            hint=f"the recipe's variants are {', '.join(config.variants)}",
        )
    return dataclasses.replace(config, variants={k: v for k, v in config.variants.items() if k in wanted})


def _plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _build(klass: type, data: Any, where: str) -> Any:
    return check_field_types(build_dataclass(klass, {} if data is None else data, where, noun="key"), where)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a recipe file; ``overrides`` (e.g. from the CLI) replace top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot parse recipe: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping")
    data.update(overrides or {})
    where = str(path)
    tasks = data.pop("tasks", {}) or {}
    if not isinstance(tasks, dict) or not tasks:
        raise UserError(f"{where}: 'tasks' must map task names to their data")
    for name in tasks:
        check_name(name, what="task", where=f"{where}: tasks")
    variants = data.get("variants", {"full": {}})
    if not isinstance(variants, dict):
        raise UserError(f"{where}: 'variants' must map variant names to training overrides, got {variants!r}")
    for name, overrides in variants.items():
        check_name(name, what="variant", where=f"{where}: variants")
        if overrides is not None and not isinstance(overrides, dict):
            raise UserError(
                f"{where}: variants.{name} must be a mapping of training overrides (or {{}}), got {overrides!r}",
                hint="e.g. variants: {full: {}, no_instructions: {use_instructions: false}}",
            )
    config = _build(
        PipelineConfig,
        {
            **{k: v for k, v in data.items() if k not in ("score", "train", "eval", "variants")},
            "variants": {name: dict(overrides or {}) for name, overrides in variants.items()},
            "tasks": {name: _build(TaskData, spec, f"{where}: tasks.{name}") for name, spec in tasks.items()},
            "score": _build(ScoreConfig, data.get("score"), f"{where}: score"),
            "train": recipe_section(
                data.get("train"),
                defaults=TRAIN_DEFAULTS,
                reserved=TRAIN_RESERVED,
                datasets=list(tasks),
                source=f"{where}: train",
            ),
            "eval": _build(EvalConfig, data.get("eval"), f"{where}: eval"),
        },
        where,
    )
    config.base_dir = str(path.parent)
    if "full" not in config.variants:
        raise UserError(f"{where}: 'variants' must include 'full' (the complete recipe)")
    for name, overrides in config.variants.items():
        subset = overrides.get("tasks")
        if subset is not None and (
            not isinstance(subset, list) or not subset or not {str(t) for t in subset} <= set(config.tasks)
        ):
            raise UserError(
                f"{where}: variants.{name}.tasks must be a non-empty list of the recipe's tasks "
                f"({', '.join(config.tasks)}), got {subset!r}"
            )
    from llm_embedder.pipeline.training import check_variants

    check_variants(config, where)  # every variant's training config, before any stage spends an hour
    return config
