"""Training data: read and check every file before training starts, then serve sampled groups.

:func:`load_training_sets` reads each ``--data`` file, decides its task, applies the task's (resolved) training
settings and rejects bad input with ONE line naming file:line and field - unscored records where the loss needs
teacher scores, records no group can be built from - before any model is loaded (or, with ``skip_invalid``, leaves
such records out and counts them). The lrlm-style margin filter drops records here too (counted, reported in the log
and the model card), and then ``training.max_sample_num`` keeps only a file's LAST n records, as the reference
(``train_test_split(n, shuffle=False)["test"]`` after its filter: 10,000 for lrlm, whose files are written document
by document, so the cap keeps whole later documents).

:class:`GroupDataset` is the ``Dataset`` the DataLoader reads: an item is a :class:`~.batch_sampler.SampleRef`, whose seed
drives the group sampling, so data-loader workers can build groups in parallel and the result does not depend on
which worker did it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from llm_embedder.data.records import read_records
from llm_embedder.errors import DataError, UserError
from llm_embedder.tasks.registry import TaskRegistry
from llm_embedder.tasks.spec import TrainingSpec
from llm_embedder.training.batch_sampler import SampleRef
from llm_embedder.training.config import DatasetConfig, TrainConfig
from llm_embedder.training.group_sampler import Candidates, GroupSampler
from llm_embedder.training.task_losses import build_group_sampler, resolve_training_spec, uses_teacher_scores


@dataclass
class TrainingSet:
    """One named dataset, ready for sampling."""

    name: str
    task: str
    path: str
    spec: TrainingSpec
    sampler: GroupSampler
    items: list[Candidates]
    weight: float = 1.0
    #: records dropped by the teacher-score margin filter
    dropped: int = 0
    #: invalid records left out under ``skip_invalid`` (--skip-invalid), and the first one's error line
    skipped: int = 0
    first_skip: str | None = None
    #: records left out by ``training.max_sample_num`` (the first ones of the file)
    capped: int = 0

    def __len__(self) -> int:
        return len(self.items)


def _where(source: str | None) -> tuple[str, int | None]:
    if source and ":" in source:
        path, _, line = source.rpartition(":")
        if line.isdigit():
            return path, int(line)
    return source or "<records>", None


def dataset_task(dataset: DatasetConfig, registry: TaskRegistry, record_tasks: set[str | None]) -> str:
    """The task of a dataset: given, else its name when that is a task, else its records' (single) task."""
    if dataset.task:
        registry.get(dataset.task)
        return dataset.task
    if dataset.name in registry:
        return dataset.name
    named = {t for t in record_tasks if t}
    if len(named) == 1 and None not in record_tasks:
        return named.pop()
    raise UserError(
        f"cannot tell the task of dataset '{dataset.name}' ({dataset.path})"
        + (f": its records name several tasks ({', '.join(sorted(named))})" if len(named) > 1 else ""),
        hint=f"name it after a task (e.g. qa={dataset.path}), use NAME:TASK=FILE, or give every record a 'task' field",
    )


def load_training_set(dataset: DatasetConfig, config: TrainConfig, registry: TaskRegistry) -> TrainingSet:
    """Read, check and prepare one dataset (see the module docstring)."""
    forced = dataset.task or (dataset.name if dataset.name in registry else None)
    skip_invalid = config.data.skip_invalid
    skipped: list[DataError] | None = [] if skip_invalid else None
    records = list(read_records(dataset.path, task=forced, registry=registry, skipped=skipped))
    task = dataset_task(dataset, registry, {r.task for r in records})
    spec = resolve_training_spec(
        registry.get(task).training,
        task=task,
        hard_labels=config.data.hard_labels,
        distillation=config.data.distillation,
        loss_overrides=config.data.loss_overrides,
    )
    sampler = build_group_sampler(spec, group_size=config.data.group_size, repeat=config.data.repeat)
    carry_scores = uses_teacher_scores(spec) and not config.data.hard_labels
    need_scores = carry_scores and (spec.needs_teacher_scores or sampler.needs_teacher_scores)

    items: list[Candidates] = []
    problems: list[tuple[str | None, str, str, str]] = []
    for record in records:
        candidates = Candidates.from_record(record, use_teacher_scores=carry_scores)
        if need_scores and candidates.teacher_scores is None:
            problems.append(
                (
                    record.source,
                    "teacher_scores",
                    f"missing, but task '{task}' trains with {spec.loss.replace('_', ' ')}",
                    "score the file first (llm-embedder score), or pass --hard-labels to train on the labelled positives",
                )
            )
            continue
        problem = sampler.problem(candidates)
        if problem is not None:
            problems.append((record.source, *problem))
            continue
        items.append(candidates)
    if problems and not skip_invalid:
        source, field_name, message, hint = problems[0]
        more = f" (and {len(problems) - 1} more record(s) of {dataset.path})" if len(problems) > 1 else ""
        path, lineno = _where(source)
        raise DataError(path, lineno, message + more, field=field_name, hint=hint)
    skip_lines = [str(e) for e in skipped or []]
    for source, field_name, message, hint in problems:
        path, lineno = _where(source)
        skip_lines.append(str(DataError(path, lineno, message, field=field_name, hint=hint)))

    kept = [c for c in items if sampler.keeps(c)]
    capped = 0
    if spec.max_sample_num is not None and len(kept) > spec.max_sample_num:
        capped = len(kept) - spec.max_sample_num
        kept = kept[capped:]
    return TrainingSet(
        name=dataset.name,
        task=task,
        path=dataset.path,
        spec=spec,
        sampler=sampler,
        items=kept,
        weight=config.dataset_weights()[dataset.name],
        dropped=len(items) - len(kept) - capped,
        capped=capped,
        skipped=len(skip_lines),
        first_skip=skip_lines[0] if skip_lines else None,
    )


def load_training_sets(config: TrainConfig, registry: TaskRegistry) -> list[TrainingSet]:
    """All datasets of the recipe, checked (raises the first problem as one line)."""
    sets = [load_training_set(dataset, config, registry) for dataset in config.data.data]
    for ts in sets:
        if not ts.items:
            raise UserError(
                f"dataset '{ts.name}' ({ts.path}) has no usable records"
                + (
                    f" ({ts.dropped} dropped by the teacher-score margin {ts.spec.min_score_margin:g})"
                    if ts.dropped
                    else ""
                ),
                hint="check the file or lower training.min_score_margin in the task table",
            )
    return sets


class GroupDataset(Dataset):
    """Items are :class:`SampleRef`; each yields a freshly sampled group (see the module docstring)."""

    def __init__(self, sets: Sequence[TrainingSet]) -> None:
        self.sets = list(sets)

    def __len__(self) -> int:
        return sum(len(ts) for ts in self.sets)

    def __getitem__(self, ref: SampleRef) -> dict[str, Any]:  # type: ignore[override]
        ts = self.sets[ref.dataset]
        candidates = ts.items[ref.index]
        group = ts.sampler.sample(candidates, np.random.default_rng(ref.seed))
        return {
            "dataset": ts.name,
            "task": ts.task,
            "query": group.query,
            "keys": group.keys,
            # every labelled positive, sampled or not: another query's copy of one is no negative of this one
            "positives": list(candidates.keys[: candidates.num_pos]),
            "teacher_scores": group.teacher_scores,
            "id": f"{ts.name}:{ref.index}",
        }
