"""The metadata filter language of the store contract: validation, the reference evaluator, and Milvus' translation.

One place defines what a filter means (:func:`matches`); the embedded store evaluates it directly and the Milvus
store translates it (:func:`to_milvus`) into an expression over a typed copy of the metadata, so both backends agree
case by case (the contract test suite checks them against each other).

Semantics (see :mod:`llm_embedder.retrieval.store.base` for the language):

* types are compared strictly: a string equals only a string, a boolean only a boolean, and numbers (int or float)
  compare numerically (``1 == 1.0``); so ``{"n": {"$ne": "1"}}`` matches ``n = 1`` (present, different);
* a document whose metadata lacks the field, or holds a list under it, matches no condition on that field
  (``$ne`` / ``$nin`` included): conditions read scalar values only, lists are kept and returned but not filtered on;
* order operators (``$gt`` ...) take a number and match only numeric values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_embedder.errors import UserError

FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
ORDER = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    """One validated condition: ``field op value`` (``value`` is a tuple for ``$in`` / ``$nin``)."""

    field: str
    op: str
    value: Any


def _kind(value: Any) -> str | None:
    """'s' string, 'b' boolean, 'n' number, None for anything not filterable (lists, null, objects, NaN)."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, str):
        return "s"
    if isinstance(value, int | float) and math.isfinite(value):
        return "n"
    return None


def _scalar(field: str, op: str, value: Any) -> Scalar:
    if _kind(value) is None:
        raise UserError(
            f"filter field {field!r}: {op} needs a string, number or boolean, got {value!r}",
            hint='e.g. {"lang": "en"} or {"year": {"$gte": 2020}}',
        )
    return value


def parse_filter(filter: Mapping[str, Any] | None) -> tuple[Condition, ...]:
    """Validate ``filter`` and return its conditions (ANDed); ``None`` or ``{}`` means no condition."""
    if filter is None:
        return ()
    if not isinstance(filter, Mapping):
        raise UserError(f"a filter must be a mapping of field -> condition, got {type(filter).__name__}")
    out: list[Condition] = []
    for field, cond in filter.items():
        if not isinstance(field, str) or not FIELD_NAME.match(field):
            raise UserError(
                f"filter field {field!r} is not an identifier", hint="field names match [A-Za-z_][A-Za-z0-9_]*"
            )
        if not isinstance(cond, Mapping):
            out.append(Condition(field, "$eq", _scalar(field, "$eq", cond)))
            continue
        if not cond:
            raise UserError(f"filter field {field!r}: empty condition", hint=f"use one of {', '.join(OPERATORS)}")
        for op, value in cond.items():
            if op not in OPERATORS:
                raise UserError(f"filter field {field!r}: unknown operator {op!r}", hint=f"use {', '.join(OPERATORS)}")
            if op in ("$in", "$nin"):
                if not isinstance(value, list | tuple) or not value:
                    raise UserError(f"filter field {field!r}: {op} needs a non-empty list, got {value!r}")
                out.append(Condition(field, op, tuple(_scalar(field, op, v) for v in value)))
            elif op in ORDER:
                if _kind(value) != "n":
                    raise UserError(f"filter field {field!r}: {op} needs a number, got {value!r}")
                out.append(Condition(field, op, value))
            else:
                out.append(Condition(field, op, _scalar(field, op, value)))
    return tuple(out)


def _equal(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    return ka is not None and ka == kb and a == b


def matches(metadata: Mapping[str, Any], conditions: tuple[Condition, ...]) -> bool:
    """Whether a document's ``metadata`` satisfies every condition (the reference semantics)."""
    for c in conditions:
        value = metadata.get(c.field)
        kind = _kind(value)
        if kind is None:  # missing, null, list, object: no condition matches
            return False
        if c.op == "$eq":
            ok = _equal(value, c.value)
        elif c.op == "$ne":
            ok = not _equal(value, c.value)
        elif c.op == "$in":
            ok = any(_equal(value, v) for v in c.value)
        elif c.op == "$nin":
            ok = not any(_equal(value, v) for v in c.value)
        else:
            ok = (
                kind == "n"
                and {
                    "$gt": value > c.value,
                    "$gte": value >= c.value,
                    "$lt": value < c.value,
                    "$lte": value <= c.value,
                }[c.op]
            )
        if not ok:
            return False
    return True


def validate_metadata(metadata: Any, where: str) -> dict[str, Any]:
    """Check a document's metadata: a JSON object of identifier -> scalar or list of scalars."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise UserError(f"{where}: metadata must be an object, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not FIELD_NAME.match(key):
            raise UserError(f"{where}: metadata field {key!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item is not None and _kind(item) is None:
                raise UserError(
                    f"{where}: metadata field {key!r} holds {item!r}",
                    hint="values are strings, finite numbers, booleans, null or lists of them",
                )
    return dict(metadata)


# ---------------------------------------------------------------------------------------------------- Milvus
#: Milvus JSON field holding the filterable copy of the metadata: {"v": {field: scalar}, "k": ["field:kind", ...]}
TYPED_FIELD = "fmeta"


def typed_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The filterable copy of ``metadata`` for Milvus: scalars only, with each field's kind listed.

    Milvus compares JSON values loosely across types; listing ``field:kind`` lets the expression demand the kind, so
    ``"1"`` never equals ``1`` and a list or missing field never matches, exactly as :func:`matches` says.
    """
    values = {k: v for k, v in metadata.items() if _kind(v) is not None}
    return {"v": values, "k": sorted(f"{k}:{_kind(v)}" for k, v in values.items())}


def milvus_literal(value: Any) -> str:
    """A Milvus expression literal (milvus-lite has no expression templates, so values are rendered safely here:
    strings as JSON strings - double quotes, backslash escapes - numbers in full precision, booleans lower case)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(milvus_literal(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def to_milvus(conditions: tuple[Condition, ...]) -> str:
    """A Milvus boolean expression for ``conditions`` over the :data:`TYPED_FIELD` copy of the metadata."""
    lit = milvus_literal
    parts: list[str] = []

    def has(field: str, kind: str) -> str:
        return f'json_contains({TYPED_FIELD}["k"], {lit(f"{field}:{kind}")})'

    def present(field: str) -> str:
        return f'json_contains_any({TYPED_FIELD}["k"], {lit([f"{field}:{k}" for k in ("s", "n", "b")])})'

    def eq(field: str, value: Any) -> str:
        return f'({has(field, _kind(value) or "")} and {TYPED_FIELD}["v"]["{field}"] == {lit(value)})'

    for c in conditions:
        if c.op == "$eq":
            parts.append(eq(c.field, c.value))
        elif c.op == "$ne":
            parts.append(f"({present(c.field)} and not {eq(c.field, c.value)})")
        elif c.op in ("$in", "$nin"):
            anyof = "(" + " or ".join(eq(c.field, v) for v in c.value) + ")"
            parts.append(anyof if c.op == "$in" else f"({present(c.field)} and not {anyof})")
        else:
            parts.append(f'({has(c.field, "n")} and {TYPED_FIELD}["v"]["{c.field}"] {ORDER[c.op]} {lit(c.value)})')
    return " and ".join(parts)
