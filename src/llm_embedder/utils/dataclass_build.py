"""Building config dataclasses from user mappings (YAML/JSON), strictly.

Unknown keys are errors, so a typo never silently falls back to a default; shared by the task table, the training
recipe and the pipeline recipe.

A string that spells a number is accepted for a ``float`` field: YAML 1.1 (PyYAML) reads ``5e-5`` - without a dot -
as the string ``"5e-5"``, and a recipe saying ``lr: 5e-5`` means the number.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
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


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return {list: "a list", dict: "a mapping"}.get(origin, str(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits the annotation ``tp`` (a number written as text counts as one)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        (item,) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        if not isinstance(value, Mapping):
            return False, value
        _, item = typing.get_args(tp) or (Any, Any)
        entries = {k: _coerce(v, item) for k, v in value.items()}
        return all(ok for ok, _ in entries.values()), {k: v for k, (_, v) in entries.items()}
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, value  # kept as written: an int stays an int (stage fingerprints hash the values)
        if isinstance(value, str):
            # YAML 1.1 reads "5e-5" (no dot) as a string; it is plainly the number the user meant
            try:
                number = float(value)
            except ValueError:
                return False, value
            return math.isfinite(number), number
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    return True, value  # a type we do not check (a callable escape hatch, ...)


def floats_as_declared(value: Any, tp: Any) -> Any:
    """``value`` with each int that ``tp`` declares a float (``dict[str, float]`` values included) written as one.

    Why: :func:`_coerce` keeps an int as written, and that is right for the values a run uses. A fingerprint of
    user-written settings needs one spelling per value instead: YAML reads ``{convsearch: 2}`` as an int and
    ``{convsearch: 2.0}`` as a float, the trainer treats them alike, and their JSON differs. An int where an int
    is declared (``seed: 1``) stays an int, so a recipe that wrote every value in its declared type keeps the
    fingerprints it had; one that wrote an int for a float field gets a new one, once.
    """
    if isinstance(value, bool) or tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, int):
            return float(value) if float in args and int not in args else value
        for arg in args:
            inner = typing.get_origin(arg)
            if (inner is dict and isinstance(value, Mapping)) or (inner is list and isinstance(value, list)):
                return floats_as_declared(value, arg)
        return value
    if origin is dict and isinstance(value, Mapping):
        item = args[1] if args else Any
        return {key: floats_as_declared(entry, item) for key, entry in value.items()}
    if origin is list and isinstance(value, list):
        item = args[0] if args else Any
        return [floats_as_declared(entry, item) for entry in value]
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def check_field_types(instance: Any, where: str) -> Any:
    """Check every field of a built dataclass against its type hint, in place; returns ``instance``.

    :func:`build_dataclass` checks the keys only, so ``seed: abc`` in a recipe would travel until some stage does
    arithmetic with it (an hour later, as a traceback). Numbers written as text (YAML's ``lr: 5e-5``) are converted.
    """
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        ok, converted = _coerce(value, hints.get(f.name, Any))
        if not ok:
            raise UserError(f"{where}: '{f.name}' must be {_type_name(hints[f.name])}, got {value!r}")
        setattr(instance, f.name, converted)
    return instance
