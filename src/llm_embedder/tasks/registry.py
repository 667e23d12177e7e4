"""The task registry: built-in tasks from ``builtin.yaml`` plus tasks users register (Python or a YAML/JSON file)."""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llm_embedder.errors import UserError
from llm_embedder.tasks.spec import TaskSpec


class TaskRegistry:
    """An ordered name -> :class:`TaskSpec` table."""

    def __init__(self, specs: Mapping[str, TaskSpec] | None = None) -> None:
        self._specs: dict[str, TaskSpec] = dict(specs or {})

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return list(self._specs)

    def specs(self) -> list[TaskSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> TaskSpec:
        """The spec of ``name``; an unknown name is a one-line error listing the known tasks."""
        try:
            return self._specs[name]
        except KeyError:
            raise UserError(
                f"unknown task {name!r}",
                hint=f"known tasks: {', '.join(self._specs)}; register your own with --tasks FILE or register_task()",
            ) from None

    def register(self, spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
        if spec.name in self._specs and not overwrite and self._specs[spec.name] != spec:
            raise UserError(f"task {spec.name!r} is already registered", hint="pass overwrite=True to replace it")
        spec.validate()
        self._specs[spec.name] = spec
        return spec

    def update_from_mapping(self, data: Mapping[str, Any], *, source: str, overwrite: bool = True) -> list[str]:
        """Register every task of ``{name: fields}``; fields missing in a known task are taken from it."""
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: a task file must map task names to their fields")
        added = []
        for name, fields in data.items():
            if name in self._specs and isinstance(fields, Mapping):
                fields = _deep_merge(self._specs[name].to_dict(), dict(fields))
            self.register(TaskSpec.from_dict(str(name), fields, source=source), overwrite=overwrite)
            added.append(str(name))
        return added

    def load_file(self, path: str | Path, *, overwrite: bool = True) -> list[str]:
        """Register the tasks of a YAML or JSON file (same layout as ``builtin.yaml``)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"task file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: cannot parse task file: {' '.join(str(exc).split())}") from None
        return self.update_from_mapping(data or {}, source=str(path), overwrite=overwrite)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: spec.to_dict() for name, spec in self._specs.items()}

    def copy(self) -> TaskRegistry:
        return TaskRegistry(copy.deepcopy(self._specs))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def builtin_registry() -> TaskRegistry:
    """A fresh registry holding the six tasks of the paper."""
    text = resources.files("llm_embedder.tasks").joinpath("builtin.yaml").read_text(encoding="utf-8")
    registry = TaskRegistry()
    registry.update_from_mapping(yaml.safe_load(text), source="builtin.yaml")
    return registry


#: The process-wide default registry; ``register_task`` adds to it.
TASKS: TaskRegistry = builtin_registry()


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task (built-in or user-registered)."""
    return TASKS.get(name)


def register_task(
    name: str,
    query_instruction: str,
    key_instruction: str,
    *,
    overwrite: bool = False,
    **fields: Any,
) -> TaskSpec:
    """Register a new task in the default registry, e.g. ``register_task("code", "Find code for: ", "Code: ")``."""
    spec = TaskSpec.from_dict(
        name,
        {"query_instruction": query_instruction, "key_instruction": key_instruction, **fields},
        source="register_task",
    )
    return TASKS.register(spec, overwrite=overwrite)


def load_task_file(path: str | Path) -> list[str]:
    """Register the tasks of a YAML/JSON file in the default registry; returns their names."""
    return TASKS.load_file(path)


# The --tasks option of every command that reads the task table (commands and builders share it; no CLI import).
def add_tasks_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks",
        dest="tasks_file",
        metavar="FILE",
        help="YAML/JSON file with extra task definitions (same layout as the built-in task table)",
    )


def load_tasks_file(args: argparse.Namespace) -> None:
    """Register the tasks of ``--tasks FILE`` (if given) before anything reads the task table."""
    if getattr(args, "tasks_file", None):
        TASKS.load_file(args.tasks_file)
