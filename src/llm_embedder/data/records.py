"""The record format of LLM-Embedder (method.md section 2), validated line by line.

A record is one query with its candidates: ``pos`` then ``neg`` (or, for chat, the ``history`` turns) and, once
scored, ``teacher_scores`` in the same order. ``pos_grades`` (optional, aligned with ``pos_index``) carries graded
relevance from judged collections (BEIR/TREC qrels, ``llm-embedder build beir``) so nDCG stays graded; without it
every positive counts as grade 1. Fields we do not know (the reference's ``pos_scores``, ``context``,
``qid`` ...) are kept in ``extra`` and written back unchanged, so files round-trip.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llm_embedder.data.jsonl import iter_jsonl, write_jsonl
from llm_embedder.errors import DataError
from llm_embedder.tasks.registry import TASKS, TaskRegistry

_KNOWN = (
    "query",
    "pos",
    "neg",
    "pos_index",
    "pos_grades",
    "neg_index",
    "teacher_scores",
    "answers",
    "history",
    "options",
    "task",
    "query_id",
)


@dataclass
class Record:
    """One query and its candidate keys."""

    query: str
    pos: list[str] = field(default_factory=list)
    neg: list[str] = field(default_factory=list)
    pos_index: list[int] | None = None
    neg_index: list[int] | None = None
    teacher_scores: list[float] | None = None
    answers: list[str] | None = None
    history: list[str] | None = None
    options: list[str] | None = None
    task: str | None = None
    query_id: int | str | None = None
    #: relevance grade (>= 1) of each ``pos_index`` row, from graded qrels; None = every positive is grade 1
    pos_grades: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: where the record came from ("file:line"), for error messages; not written out
    source: str | None = field(default=None, compare=False, repr=False)
    #: the source had no pos/neg fields (chat records): do not invent empty ones when writing back
    omit_empty_pos_neg: bool = field(default=False, compare=False, repr=False)

    @property
    def uses_history(self) -> bool:
        """Chat records: the candidates are the memory turns, not pos/neg."""
        return self.history is not None and len(self.history) > 0 and not self.pos and not self.neg

    @property
    def candidates(self) -> list[str]:
        """The keys that ``teacher_scores`` refer to, in order (pos then neg, or the history)."""
        if self.uses_history:
            return list(self.history or [])
        return list(self.pos) + list(self.neg)

    @property
    def num_pos(self) -> int:
        return 0 if self.uses_history else len(self.pos)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-able dict (known fields that are set, then the extra fields)."""
        out: dict[str, Any] = {}
        for name in _KNOWN:
            value = getattr(self, name)
            if value is None or (self.omit_empty_pos_neg and name in ("pos", "neg") and not value):
                continue
            out[name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(
        cls,
        obj: dict[str, Any],
        *,
        path: str = "<record>",
        lineno: int | None = None,
        task: str | None = None,
        registry: TaskRegistry | None = None,
    ) -> Record:
        """Validate ``obj`` and build a record; every problem is a :class:`DataError` naming file:line and field."""
        registry = registry if registry is not None else TASKS

        def fail(message: str, name: str | None = None, hint: str | None = None) -> DataError:
            return DataError(path, lineno, message, field=name, hint=hint)

        if "query" not in obj:
            raise fail("missing", "query", "every record needs a 'query' string")
        query = obj["query"]
        if not isinstance(query, str):
            raise fail(f"must be a string, got {type(query).__name__}", "query")

        def str_list(name: str, required: bool = False) -> list[str] | None:
            value = obj.get(name)
            if value is None:
                return [] if required else None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail("must be a list of strings", name)
            return value

        def int_list(name: str) -> list[int] | None:
            value = obj.get(name)
            if value is None:
                return None
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
            ):
                raise fail("must be a list of non-negative integers (corpus row numbers)", name)
            return value

        pos = str_list("pos", required=True) or []
        neg = str_list("neg", required=True) or []
        history = str_list("history")
        answers = str_list("answers")
        options = str_list("options")
        pos_index = int_list("pos_index")
        neg_index = int_list("neg_index")
        if pos_index is not None and pos and len(pos_index) != len(pos):
            raise fail(f"has {len(pos_index)} entries but 'pos' has {len(pos)}", "pos_index")
        if neg_index is not None and neg and len(neg_index) != len(neg):
            raise fail(f"has {len(neg_index)} entries but 'neg' has {len(neg)}", "neg_index")
        pos_grades = obj.get("pos_grades")
        if pos_grades is not None:
            if not isinstance(pos_grades, list) or not all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in pos_grades
            ):
                raise fail(
                    "must be a list of positive integers (the relevance grade of each pos_index row)",
                    "pos_grades",
                    "grade-0 documents are not positives: leave them out of pos/pos_index",
                )
            if pos_index is None:
                raise fail("needs 'pos_index' (one grade per pos_index row)", "pos_grades")
            if len(pos_grades) != len(pos_index):
                raise fail(f"has {len(pos_grades)} entries but 'pos_index' has {len(pos_index)}", "pos_grades")

        record_task = obj.get("task")
        if record_task is not None and not isinstance(record_task, str):
            raise fail("must be a string", "task")
        effective_task = task or record_task
        if effective_task is not None and effective_task not in registry:
            raise fail(
                f"unknown task {effective_task!r}",
                "task",
                f"known tasks: {', '.join(registry.names())}; register yours with a task file",
            )

        query_id = obj.get("query_id")
        if query_id is not None and (not isinstance(query_id, (int, str)) or isinstance(query_id, bool)):
            raise fail("must be an integer or a string", "query_id")

        record = cls(
            query=query,
            pos=pos,
            neg=neg,
            pos_index=pos_index,
            neg_index=neg_index,
            answers=answers,
            history=history,
            options=options,
            task=effective_task,
            query_id=query_id,
            pos_grades=pos_grades,
            extra={k: v for k, v in obj.items() if k not in _KNOWN},
            source=f"{path}:{lineno}" if lineno is not None else path,
            omit_empty_pos_neg="pos" not in obj and "neg" not in obj,
        )
        scores = obj.get("teacher_scores")
        if scores is not None:
            if not isinstance(scores, list) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
            ):
                raise fail("must be a list of numbers", "teacher_scores")
            bad = next((i for i, s in enumerate(scores) if not math.isfinite(s)), None)
            if bad is not None:
                # json reads NaN / Infinity literals (and 1e999 as inf); one such score turns a whole model into NaN
                raise fail(
                    f"score {bad + 1} is {_json_number(scores[bad])}, not a finite number",
                    "teacher_scores",
                    "rescore the record (llm-embedder score) or remove it; --skip-invalid skips such records",
                )
            expected = len(record.candidates)
            if len(scores) != expected:
                what = "history" if record.uses_history else "pos+neg"
                raise fail(
                    f"has {len(scores)} scores but the record has {expected} candidates ({what})",
                    "teacher_scores",
                    "one score per candidate, in the order pos then neg",
                )
            record.teacher_scores = [float(s) for s in scores]
        return record

    @property
    def id(self) -> int | str | None:
        """The query id, from ``query_id`` or the reference's ``qid``."""
        return self.query_id if self.query_id is not None else self.extra.get("qid")


def _json_number(value: float) -> str:
    """A non-finite number as JSON spells it (``NaN``, ``Infinity``), which is what the user sees in the file."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def read_records(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    registry: TaskRegistry | None = None,
    skipped: list[DataError] | None = None,
) -> Iterator[Record]:
    """Stream and validate the records of a JSON-lines file.

    ``task`` (e.g. from ``--task``) overrides the records' own ``task`` field; either must name a known task.
    ``skipped``: the ``--skip-invalid`` mode - an invalid record is appended here (its one-line error) and left out
    instead of stopping the read, so one bad line of a million does not stop a job; the caller reports the count.
    A line that is not JSON at all still stops the read (the file itself is broken, not one record).
    """
    registry = registry if registry is not None else TASKS
    if task is not None:
        registry.get(task)
    for lineno, obj in iter_jsonl(path):
        try:
            record = Record.from_dict(obj, path=str(path), lineno=lineno, task=task, registry=registry)
        except DataError as exc:
            if skipped is None:
                raise
            skipped.append(exc)
            continue
        yield record


def load_records(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    registry: TaskRegistry | None = None,
    skipped: list[DataError] | None = None,
) -> list[Record]:
    """All records of a file as a list (see :func:`read_records`)."""
    return list(read_records(path, task=task, registry=registry, skipped=skipped))


def write_records(path: str | os.PathLike[str], records: Iterable[Record]) -> int:
    """Atomically write records as JSON lines; returns how many were written."""
    return write_jsonl(path, (r.to_dict() for r in records))
