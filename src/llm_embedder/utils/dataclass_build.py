"""Building config dataclasses from user mappings (YAML/JSON), strictly.

Unknown keys are errors, so a typo never silently falls back to a default; shared by the task table, the training
recipe and the pipeline recipe.

A string that spells a number is accepted for a ``float`` field: YAML 1.1 (PyYAML) reads ``5e-5`` - without a dot -
as the string ``"5e-5"``, and a recipe saying ``lr: 5e-5`` means the number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from llm_embedder.errors import UserError


def build_dataclass(klass: type, data: Any, where: str, *, noun: str = "field") -> Any:
    """``klass(**data)``, with one-line errors for a non-mapping, unknown keys and missing required fields."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping")
    fields = dataclasses.fields(klass)
    known = {f.name for f in fields}
    unknown = set(data) - known
    if unknown:
        raise UserError(
            f"{where}: unknown {noun}(s) {', '.join(sorted(unknown))}", hint=f"known: {', '.join(sorted(known))}"
        )
    missing = [
        f.name
        for f in fields
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{where}: missing {noun}(s) {', '.join(missing)}")
    values = dict(data)
    for f in fields:
        if f.name in values and isinstance(values[f.name], str) and _is_float_field(f):
            values[f.name] = _number(values[f.name], f"{where}: {f.name}")
    return klass(**values)


_FLOAT_TYPES = ("float", "float | None", "Optional[float]", "int | float", "float | int")


def _is_float_field(f: dataclasses.Field) -> bool:
    return f.type in _FLOAT_TYPES or f.type in (float, float | None)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where} must be a number, got {text!r}") from None
