"""Reading a task's prompt template: where the answer starts, and the form without retrieved keys.

Templates are the task table's ``reward.template`` strings (``{key}``, ``{query}``, ``{answer}`` and any record
field), parsed by :mod:`llm_embedder.utils.templates` only - never ``str.format`` or ``eval``.
"""

from __future__ import annotations

import string

from llm_embedder.errors import UserError
from llm_embedder.utils.templates import template_fields


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def split_template(template: str) -> tuple[str, str]:
    """``(before, after)`` the single ``{answer}`` field of a template; anything else is a UserError."""
    fields = template_fields(template)
    count = fields.count("answer")
    if count != 1:
        raise UserError(
            f"reward template {template!r} must contain {{answer}} exactly once (found {count})",
            hint="e.g. 'Knowledge: {key}\\n\\nQuestion: {query}\\n\\nAnswer: {answer}'",
        )
    # Split on the parsed field, not on the text "{answer}", so escaped braces ("{{answer}}") are not matched.
    before: list[str] = []
    after: list[str] = []
    seen = False
    for literal, name, _, _ in string.Formatter().parse(template):
        (after if seen else before).append(_escape(literal))
        if name is None:
            continue
        if name == "answer":
            seen = True
        else:
            (after if seen else before).append("{" + name + "}")
    return "".join(before), "".join(after)


def without_keys(template: str) -> str:
    """The template as it reads when no key is retrieved (or none fits the budget).

    When ``{key}`` is the template's first field, everything up to and including it is dropped, and the whitespace
    that followed it: ``Knowledge: {key}\\n\\nQuestion: {query}...`` -> ``Question: {query}...`` (no empty
    "Knowledge:" block, as the reference's evaluation), ``{key}\\nSpeaker 1: {query}...`` -> ``Speaker 1: ...``.
    Otherwise ``{key}`` is simply left empty.
    """
    parsed = list(string.Formatter().parse(template))
    first = next((i for i, (_, name, _, _) in enumerate(parsed) if name is not None), None)
    if first is None or parsed[first][1] != "key":
        return template
    out: list[str] = []
    for i, (literal, name, _, _) in enumerate(parsed[first + 1 :]):
        out.append(_escape(literal.lstrip() if i == 0 else literal))
        if name is not None:
            out.append("{" + name + "}")
    return "".join(out)
