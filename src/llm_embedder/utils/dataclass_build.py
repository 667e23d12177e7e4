"""Building config dataclasses from user mappings (YAML/JSON), strictly.

Unknown keys are errors, so a typo never silently falls back to a default; shared by the task table, the training
recipe and the pipeline recipe.
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
    return klass(**data)
