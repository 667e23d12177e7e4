"""Streaming JSON-lines reading with exact error locations.

Each line is decoded on its own, so a non-UTF-8 byte or a malformed object is reported with its line number, and
files of any size are read without loading them whole.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from llm_embedder.errors import DataError, UserError
from llm_embedder.utils.files import atomic_write


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_jsonl(path: str | os.PathLike[str], *, allow_empty: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file (``.gz`` accepted)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a JSON-lines file")
    seen = 0
    with _open_binary(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    str(path), lineno, f"not valid UTF-8 (byte {exc.start})", hint="re-encode the file as UTF-8"
                ) from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    str(path),
                    lineno,
                    f"malformed JSON ({exc.msg} at column {exc.colno})",
                    hint="one JSON object per line",
                ) from None
            if not isinstance(obj, dict):
                raise DataError(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}")
            seen += 1
            yield lineno, obj
    if seen == 0 and not allow_empty:
        raise DataError(str(path), None, "file is empty (no JSON records)", hint="give a file with one record per line")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write ``rows`` as JSON lines; returns the number of rows."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
