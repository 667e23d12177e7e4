"""The training recipe as typed dataclasses: model / data / training, plus :class:`TrainConfig` holding all three.

A recipe file (YAML or JSON) is ONE flat mapping whose keys are the ``llm-embedder train`` flags (dashes become
underscores: ``batch_size``, ``grad_cache_chunk``...), so a recipe and a command line say the same things and a
flag overrides the file's value. Unknown keys are errors (a typo never falls back to a default silently). Relative
data paths in a file are resolved against the file's folder.

Defaults follow the paper (method.md section 6) where that makes sense at any scale - AdamW, lr 5e-6, weight decay
0.01, linear schedule with 10% warm-up, group size 8, query/key max length 256, tau 0.01 - and are smaller where the
paper's would not fit a laptop: 1,000 steps instead of 10k, 16 queries per process instead of 100, fp32 instead of
fp16 (CPU). Short runs on small models want a larger learning rate (2e-5 .. 5e-5).

``data`` accepts ``{name: path}``, ``{name: {path, task, weight}}``, a list of such mappings, or a list of
``"NAME[:TASK]=FILE"`` strings. A dataset's task is its ``task`` if given, else its name when that names a task,
else the ``task`` field of its records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_embedder.errors import UserError
from llm_embedder.utils.dataclass_build import build_dataclass as _build

DTYPES = ("fp32", "bf16", "fp16")
DISTILLATIONS = {"kl": "kl_distillation", "stabilized": "stabilized_distillation"}
#: ``in_batch_duplicates``: ``keep`` = every key of another query is a negative (the reference), ``mask`` = not one
#: with the same text as one of the query's own keys or labelled positives
IN_BATCH_DUPLICATES = ("keep", "mask")


@dataclass
class DatasetConfig:
    """One training file: ``name`` (shown in logs, used for weights), its ``task``, and its mixing ``weight``."""

    name: str
    path: str
    task: str | None = None
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> DatasetConfig:
        """``"NAME=FILE"`` or ``"NAME:TASK=FILE"``."""
        if "=" not in spec:
            raise UserError(f"bad --data {spec!r}", hint="use NAME=FILE or NAME:TASK=FILE, e.g. qa=train.jsonl")
        head, path = spec.split("=", 1)
        name, _, task = head.partition(":")
        if not name or not path:
            raise UserError(f"bad --data {spec!r}", hint="use NAME=FILE or NAME:TASK=FILE, e.g. qa=train.jsonl")
        return cls(name=name.strip(), path=path.strip(), task=task.strip() or None)


@dataclass
class ModelConfig:
    """The encoder and how texts reach it."""

    #: base encoder: a folder or hub id; None = the bundled all-MiniLM-L6-v2
    model: str | None = None
    query_max_length: int = 256
    key_max_length: int = 256
    #: per-task key budgets in training, overriding ``key_max_length`` for the tasks named ({tool: 256}). Why: a
    #: CPU budget trains keys at 96 tokens, which cuts half of the tool descriptions before their parameters and
    #: default values - the part a request quotes verbatim (issue 14, docs/results.md). A batch holds one task, so
    #: only that task's batches pay for the longer budget.
    task_key_max_length: dict[str, int] = field(default_factory=dict)
    #: token budgets the SAVED model encodes with: "model" = what the base encoder can read (its own max sequence
    #: length), "training" = the training truncation above (for keys the longest of ``key_max_length`` and
    #: ``task_key_max_length``). Training short (e.g. 96-token keys, to fit a CPU budget)
    #: must not cut every key to 96 tokens at retrieval time forever: a 256-token passage loses its tail, which cost
    #: a scientific-claims set 0.645 -> 0.527 nDCG@10 (issue 14). The reference trains and retrieves with one length
    #: (256); "training" restores that coupling.
    inference_max_length: str = "model"
    #: prepend the task instructions (off = the paper's "w/o instruction" ablation)
    use_instructions: bool = True
    #: override the pooling of the base model ("cls", "mean"...); default: the model's own
    pooling: str | None = None
    #: whether the instruction's tokens count in the pooled vector: None = the base model's own setting (mean
    #: pooling over every token, instruction included, for all-MiniLM-L6-v2), False = only the text's tokens (as
    #: INSTRUCTOR does; sentence-transformers' ``Pooling(include_prompt=False)``, saved with the model). For a
    #: mean-pooled encoder never trained with instructions this is most of their cost: on MS MARCO the base with
    #: the qa instructions gives 0.6808 nDCG@10 pooled, 0.7664 excluded, 0.7977 without instructions (issue 14).
    #: CLS pooling (BGE, the paper's base) is unaffected.
    pool_instructions: bool | None = None
    #: student temperature tau on cosine similarities
    temperature: float = 0.01
    #: lambda of the anchor term (``training.losses.anchor``): hold the student near the frozen base model's own
    #: similarities on plain text while it learns the tasks; 0 = the paper's loss alone
    anchor_weight: float = 0.0
    #: per-task lambda, overriding ``anchor_weight`` for the tasks named ({tool: 0}: no anchor on tool). Why: the
    #: anchor helps where the base is already good and the task is narrow (qa, chat), and holds the student back
    #: where the base is weak - tool, where the plain base is far below BM25 (issue 14, docs/results.md)
    anchor_task_weights: dict[str, float] = field(default_factory=dict)
    #: temperature of the anchor term's two distributions
    anchor_temperature: float = 0.05


@dataclass
class DataConfig:
    """Which records, how groups are sampled, how datasets share the steps, which losses."""

    data: list[DatasetConfig] = field(default_factory=list)
    #: keys per query: 1 positive + group_size - 1 negatives
    group_size: int = 8
    #: repeat negatives of records that have too few (the reference does); off = such records are an error
    repeat: bool = True
    #: mix datasets inside a step (the "w/o homogeneous in-batch negatives" ablation)
    mixed_batches: bool = False
    #: "keep": every key of another query of the step is a negative, as the reference trains; "mask": not a key
    #: with the same text as one of the query's own keys or labelled positives. Why: records of one conversation,
    #: document or API family share passages, so a query meets its own positive as another's negative (convsearch:
    #: 7.5% of the recipe's queries per step). Measured on the six-task check: no set changed measurably over three
    #: seeds, so the reference's "keep" stays the default (docs/results.md)
    in_batch_duplicates: str = "keep"
    #: optional per-dataset weights {name: weight} (alternative to DatasetConfig.weight)
    data_weights: dict[str, float] = field(default_factory=dict)
    #: ignore teacher scores: contrastive loss on the labelled positive ("w/o LLM reward" ablation)
    hard_labels: bool = False
    #: replace every distillation loss by this one: "kl" or "stabilized" ("KL instead of stabilized" ablation)
    distillation: str | None = None
    #: per-task loss: {task: "contrastive" | "kl_distillation" | "stabilized_distillation"}
    loss_overrides: dict[str, Any] = field(default_factory=dict)
    #: extra task definitions (YAML/JSON, same layout as the built-in table)
    tasks_file: str | None = None
    #: data-loader worker processes (tokenisation and group sampling run in them)
    num_workers: int = 2
    #: leave invalid records out (counted and reported) instead of stopping at the first one
    skip_invalid: bool = False


@dataclass
class TrainingConfig:
    """Optimisation, precision, checkpoints."""

    #: output folder: the trained model (LLMEmbedder / sentence-transformers folder); checkpoints in OUT/checkpoints
    output: str = ""
    steps: int = 1000
    #: queries per process per step
    batch_size: int = 16
    lr: float = 5e-6
    weight_decay: float = 0.01
    #: warm-up: a fraction of the steps (< 1) or a number of steps (>= 1)
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    #: fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast, GPU only)
    dtype: str = "fp32"
    #: gradient caching: embed this many texts at a time (None = no caching, whole batch in one graph)
    grad_cache_chunk: int | None = None
    gradient_checkpointing: bool = False
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    #: continue from the latest complete checkpoint in OUT/checkpoints
    resume: bool = False
    #: keep OUT/checkpoints after a successful run (default: removed once the final model is saved)
    keep_checkpoints: bool = False
    #: write OUT/batches-rank<r>.jsonl: which dataset and records every step of every process used (audits)
    log_batches: bool = False
    #: "cpu" forces the CPU even with a GPU present
    device: str | None = None


_SECTIONS: tuple[tuple[str, type], ...] = (("model", ModelConfig), ("data", DataConfig), ("training", TrainingConfig))
#: flat key -> section attribute
FIELD_SECTION: dict[str, str] = {f.name: section for section, klass in _SECTIONS for f in dataclasses.fields(klass)}


def flag_type(name: str) -> Any:
    """The type hint of the trainer's flag ``name`` (``Any`` for a name it does not know)."""
    klass = dict(_SECTIONS).get(FIELD_SECTION.get(name, ""))
    return typing.get_type_hints(klass).get(name, Any) if klass is not None else Any


@dataclass
class TrainConfig:
    """The full recipe; ``TrainConfig.from_dict({...flat keys...})`` or ``TrainConfig.from_file(path)``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(
        cls, mapping: Mapping[str, Any], *, base_dir: str | Path | None = None, source: str = "config"
    ) -> TrainConfig:
        """Build from a flat mapping of flag names; relative data paths are resolved against ``base_dir``."""
        if not isinstance(mapping, Mapping):
            raise UserError(f"{source}: a training recipe must be a mapping of flag names to values")
        values: dict[str, dict[str, Any]] = {section: {} for section, _ in _SECTIONS}
        unknown = []
        for key, value in mapping.items():
            name = str(key).replace("-", "_")
            if name not in FIELD_SECTION:
                unknown.append(str(key))
                continue
            values[FIELD_SECTION[name]][name] = value
        if unknown:
            raise UserError(
                f"{source}: unknown key(s) {', '.join(sorted(unknown))}",
                hint=f"known: {', '.join(sorted(FIELD_SECTION))}",
            )
        if "data" in values["data"]:
            values["data"]["data"] = parse_datasets(values["data"]["data"], base_dir=base_dir, source=source)
        config = cls(
            model=_build(ModelConfig, values["model"], source),
            data=_build(DataConfig, values["data"], source),
            training=_build(TrainingConfig, values["training"], source),
        )
        return config

    @classmethod
    def from_file(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Read a YAML/JSON recipe; ``overrides`` (e.g. CLI flags that were given) replace its values."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"training recipe {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: cannot parse training recipe: {' '.join(str(exc).split())}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{path}: a training recipe must be a mapping of flag names to values")
        config = cls.from_dict(data, base_dir=path.parent, source=str(path))
        return config.with_overrides(overrides or {}) if overrides else config

    @classmethod
    def coerce(cls, config: TrainConfig | Mapping[str, Any] | str | Path) -> TrainConfig:
        """A :class:`TrainConfig` from itself, a flat mapping or a recipe path."""
        if isinstance(config, TrainConfig):
            return config
        if isinstance(config, (str, Path)):
            return cls.from_file(config)
        return cls.from_dict(config)

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "command line") -> TrainConfig:
        """A copy with some flat keys replaced (``data`` replaces the whole list)."""
        merged = {**self.to_dict(), **{str(k).replace("-", "_"): v for k, v in overrides.items()}}
        return TrainConfig.from_dict(merged, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The flat, JSON-able recipe (the inverse of :meth:`from_dict`)."""
        out: dict[str, Any] = {}
        for section, _ in _SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                out[key] = value
        return out

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_dict` with Python objects (a loss class passed as an override) written as their dotted names."""
        return json.loads(json.dumps(self.to_dict(), default=_dotted_name))

    # ------------------------------------------------------------------ checking
    def validate(self) -> None:
        """One-line errors for values that cannot work, before anything heavy is loaded."""
        m, d, t = self.model, self.data, self.training
        if not t.output:
            raise UserError("no output folder", hint="pass -o OUT (or 'output' in the recipe)")
        if not d.data:
            raise UserError("no training data", hint="pass --data NAME=FILE (e.g. --data qa=train.jsonl)")
        mappings = (
            ("data_weights", d.data_weights, "{qa: 2.0}"),
            ("anchor_task_weights", m.anchor_task_weights, "{tool: 0.0}"),
            ("task_key_max_length", m.task_key_max_length, "{tool: 256}"),
            ("loss_overrides", d.loss_overrides, "{qa: contrastive}"),
        )
        for name, value, example in mappings:
            if not isinstance(value, Mapping):
                raise UserError(f"{name} must be a mapping, got {value!r}", hint=f"e.g. {name}: {example}")
        names = [ds.name for ds in d.data]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(
                f"dataset name(s) given twice: {', '.join(duplicates)}", hint="use NAME:TASK=FILE to rename"
            )
        unknown_weights = set(d.data_weights) - set(names)
        if unknown_weights:
            raise UserError(
                f"--data-weight for unknown dataset(s) {', '.join(sorted(unknown_weights))}",
                hint=f"datasets: {', '.join(names)}",
            )
        positive_ints = {
            "steps": t.steps,
            "batch_size": t.batch_size,
            "group_size": d.group_size,
            "query_max_length": m.query_max_length,
            "key_max_length": m.key_max_length,
            **{f"task_key_max_length.{task}": value for task, value in m.task_key_max_length.items()},
            "save_steps": t.save_steps,
            "logging_steps": t.logging_steps,
        }
        for name, value in positive_ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if t.grad_cache_chunk is not None and (not isinstance(t.grad_cache_chunk, int) or t.grad_cache_chunk < 1):
            raise UserError(f"grad_cache_chunk must be a positive integer, got {t.grad_cache_chunk!r}")
        if m.inference_max_length not in ("model", "training"):
            raise UserError(
                f"inference_max_length must be 'model' or 'training', got {m.inference_max_length!r}",
                hint="model = the encoder's own max sequence length (default), training = the training truncation",
            )
        if not isinstance(d.num_workers, int) or d.num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {d.num_workers!r}")
        numbers = {
            "lr": t.lr,
            "temperature": m.temperature,
            "anchor_weight": m.anchor_weight,
            "anchor_temperature": m.anchor_temperature,
            **{f"anchor_task_weights.{task}": value for task, value in m.anchor_task_weights.items()},
            "warmup": t.warmup,
            "weight_decay": t.weight_decay,
            "max_grad_norm": t.max_grad_norm,
            **{f"data_weights.{name}": value for name, value in d.data_weights.items()},
            **{f"weight of dataset '{ds.name}'": ds.weight for ds in d.data},
        }
        for name, value in numbers.items():
            # NaN or inf in a hyper-parameter turns every weight into NaN at the first step
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
        for name, value in (("lr", t.lr), ("temperature", m.temperature), ("anchor_temperature", m.anchor_temperature)):
            if not value > 0:
                raise UserError(f"{name} must be > 0, got {value!r}")
        if m.pool_instructions is False and d.mixed_batches:
            raise UserError(
                "pool_instructions: false needs homogeneous batches (a mixed batch has one instruction per text, "
                "and the pooling excludes one prompt length per batch)",
                hint="drop mixed_batches, or keep the instructions in the pooling",
            )
        if m.anchor_weight < 0:
            raise UserError(f"anchor_weight must be >= 0 (0: no anchor term), got {m.anchor_weight!r}")
        for task, value in m.anchor_task_weights.items():
            if value < 0:
                raise UserError(f"anchor_task_weights.{task} must be >= 0 (0: no anchor on {task}), got {value!r}")
        if t.warmup < 0:
            raise UserError(f"warmup must be >= 0 (a fraction < 1 or a number of steps), got {t.warmup!r}")
        if t.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {t.weight_decay!r}")
        if t.max_grad_norm < 0:
            raise UserError(f"max_grad_norm must be >= 0 (0: no clipping), got {t.max_grad_norm!r}")
        if t.dtype not in DTYPES:
            raise UserError(f"unknown dtype {t.dtype!r}", hint=f"choose one of {', '.join(DTYPES)}")
        if d.in_batch_duplicates not in IN_BATCH_DUPLICATES:
            raise UserError(
                f"unknown in_batch_duplicates {d.in_batch_duplicates!r}",
                hint=f"choose one of {', '.join(IN_BATCH_DUPLICATES)}",
            )
        if d.distillation is not None and d.distillation not in DISTILLATIONS:
            raise UserError(
                f"unknown distillation {d.distillation!r}", hint=f"choose one of {', '.join(DISTILLATIONS)}"
            )
        for ds in d.data:
            if not ds.weight > 0:
                raise UserError(f"dataset '{ds.name}' has weight {ds.weight}", hint="weights must be > 0")

    def dataset_weights(self) -> dict[str, float]:
        """Weight of each dataset: ``data_weights`` wins over the dataset's own ``weight``."""
        return {ds.name: float(self.data.data_weights.get(ds.name, ds.weight)) for ds in self.data.data}


def recipe_section(
    mapping: Any,
    *,
    defaults: Mapping[str, Any] | None = None,
    reserved: Sequence[str] = (),
    datasets: Sequence[str] = (),
    source: str = "config",
) -> dict[str, Any]:
    """A partial training recipe (flat keys, e.g. the pipeline recipe's ``train:``), checked and normalised.

    Why: a recipe that embeds a training recipe uses THIS class's keys and checks rather than a second, drifting
    copy of them: unknown keys and bad values fail at load time, before anything runs (not after an hour of
    scoring). ``defaults`` fill keys the section leaves out; ``reserved`` are keys the caller sets itself (data,
    output ...) and refuses here; ``datasets``: the names the caller's data will have (checked against
    ``data_weights``). Returns ``defaults`` updated with the section, values as :meth:`TrainConfig.from_dict` reads
    them (``"5e-5"`` -> 5e-05).
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise UserError(f"{source} must be a mapping of training flag names to values")
    given = {str(key).replace("-", "_"): value for key, value in mapping.items()}
    taken = sorted(set(given) & set(reserved))
    if taken:
        raise UserError(f"{source}: {', '.join(taken)} cannot be set here", hint="the recipe sets them itself")
    section = {**(defaults or {}), **given}
    built = TrainConfig.from_dict(section, source=source)
    # the whole recipe's checks, with stand-ins for what the caller fills in later
    stand_ins = {"data": [DatasetConfig(name=str(name), path="-") for name in (datasets or ["data"])], "output": "-"}
    try:
        TrainConfig.from_dict({**section, **stand_ins}, source=source).validate()
    except UserError as exc:
        raise UserError(f"{source}: {exc.line()}") from None
    values = built.to_dict()
    return {key: values[key] for key in section}


def parse_datasets(value: Any, *, base_dir: str | Path | None = None, source: str = "config") -> list[DatasetConfig]:
    """Datasets from any accepted form (see the module docstring)."""
    items: list[DatasetConfig] = []
    if isinstance(value, Mapping):
        for name, spec in value.items():
            if isinstance(spec, (str, Path)):
                items.append(DatasetConfig(name=str(name), path=str(spec)))
            elif isinstance(spec, Mapping):
                items.append(_build(DatasetConfig, {"name": str(name), **spec}, f"{source}: data.{name}"))
            else:
                raise UserError(f"{source}: data.{name} must be a path or a mapping with 'path'")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for entry in value:
            if isinstance(entry, DatasetConfig):
                items.append(entry)
            elif isinstance(entry, str):
                items.append(DatasetConfig.parse(entry))
            elif isinstance(entry, Mapping):
                items.append(_build(DatasetConfig, dict(entry), f"{source}: data"))
            else:
                raise UserError(f"{source}: each data entry must be 'NAME=FILE' or a mapping, got {entry!r}")
    else:
        raise UserError(f"{source}: 'data' must map dataset names to files", hint="e.g. data: {qa: train.jsonl}")
    if base_dir is not None:
        for ds in items:
            path = Path(ds.path).expanduser()
            if not path.is_absolute():
                ds.path = str(Path(base_dir) / path)
    return items


def _dotted_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
