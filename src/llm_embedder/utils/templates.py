"""Safe string templates such as ``"{title} {text}"`` or the reward prompts.

``str.format`` on user-supplied templates would allow attribute and index access (``{x.__class__}``); we allow
plain field names only, and say which field is missing instead of raising a bare ``KeyError``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from llm_embedder.errors import UserError

_FORMATTER = string.Formatter()


def template_fields(template: str) -> list[str]:
    """The field names used by ``template`` (in order, duplicates kept), validating their form."""
    fields: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise UserError(
            f"invalid template {template!r}: {exc}", hint="escape literal braces as '{{' and '}}'"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise UserError(
                f"invalid template field {{{name}}} in {template!r}",
                hint="only plain names such as {title} or {text} are allowed",
            )
        fields.append(name)
    return fields


def render_template(template: str, values: Mapping[str, Any], *, where: str = "") -> str:
    """Fill ``template`` with ``values``; a missing field is a one-line :class:`UserError`."""
    out: list[str] = []
    for literal, name, _, _ in _FORMATTER.parse(template):
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier():
            raise UserError(f"invalid template field {{{name}}} in {template!r}")
        if name not in values:
            prefix = f"{where}: " if where else ""
            raise UserError(
                f"{prefix}field '{name}' needed by template {template!r} is missing",
                hint=f"available fields: {', '.join(sorted(values)) or 'none'}",
            )
        value = values[name]
        out.append("" if value is None else str(value))
    return "".join(out)
