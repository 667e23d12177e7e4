"""Corpus files: one JSON object per line (``title``, ``text``, ...), row number = id.

Keys are rendered with the task's key template (``"{title} {text}"`` for qa), so the same corpus serves several
tasks. Rows are kept as dicts; :func:`iter_corpus_rows` streams files too large to hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_embedder.data.jsonl import iter_jsonl
from llm_embedder.errors import DataError, UserError
from llm_embedder.utils.templates import render_template, template_fields


def render_key(key_template: str, row: Mapping[str, Any], *, where: str = "") -> str:
    """Corpus row -> retrieval key: the template filled and stripped (so an empty title adds no leading space).

    The one rendering rule, shared by :class:`Corpus` (eval, index, mining), the builders that write ``pos``
    texts, ``encode``, and the service and ``reindex`` (which must give a stored document the key that training
    and eval give the same row), so a record's ``pos`` always equals the key that eval renders for its
    ``pos_index`` row. ``where`` (file:line, request field) goes into the error for a missing field.
    """
    return render_template(key_template, row, where=where).strip()


def iter_corpus_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)``; blank lines are skipped, so row ids count non-blank lines only."""
    yield from iter_jsonl(path)


class Corpus(Sequence[str]):
    """A corpus whose items are rendered keys; ``corpus[i]`` is row ``i`` through the key template."""

    def __init__(self, rows: list[dict[str, Any]], key_template: str = "{text}", *, path: str = "<corpus>") -> None:
        fields = template_fields(key_template)
        self.rows = rows
        self.key_template = key_template
        self.path = path
        self._keys: list[str] = []
        for i, row in enumerate(rows):
            for name in fields:
                if name not in row:
                    raise DataError(
                        path,
                        i + 1,
                        f"missing (needed by key template {key_template!r})",
                        field=name,
                        hint="pass --key-template to match your corpus fields",
                    )
            self._keys.append(render_key(key_template, row))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], key_template: str = "{text}") -> Corpus:
        path = Path(path)
        rows: list[dict[str, Any]] = []
        fields = template_fields(key_template)
        for lineno, row in iter_corpus_rows(path):
            for name in fields:
                if name not in row:
                    raise DataError(
                        str(path),
                        lineno,
                        f"missing (needed by key template {key_template!r})",
                        field=name,
                        hint="pass --key-template to match your corpus fields",
                    )
            rows.append(row)
        return cls(rows, key_template, path=str(path))

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> Corpus:
        return cls([{"text": t} for t in texts], "{text}")

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):  # type: ignore[override]
        return self._keys[index]

    @property
    def keys(self) -> list[str]:
        return self._keys

    def check_index(self, index: int, where: str = "") -> None:
        if not 0 <= index < len(self):
            raise UserError(f"{where}corpus row {index} out of range (corpus {self.path} has {len(self)} rows)")
