"""Streaming JSON-lines reading with exact error locations.

Each line is decoded on its own, so a non-UTF-8 byte or a malformed object is reported with its line number, and
files of any size are read without loading them whole.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from llm_embedder.errors import DataError, UserError
from llm_embedder.utils.files import atomic_write


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _utf8(raw: bytes, path: str | os.PathLike[str], lineno: int | None) -> str:
    """``raw`` decoded as UTF-8, or a :class:`DataError` naming the file, line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            str(path), lineno, f"not valid UTF-8 (byte {exc.start})", hint="re-encode the file as UTF-8"
        ) from None


def decode_json_line(
    raw: bytes | str, path: str | os.PathLike[str], lineno: int | None, *, objects: bool = True
) -> Any:
    """One line of a JSON-lines file decoded, or a :class:`DataError` naming the file and line (the project's only
    JSON-lines decoder: records, corpora, dialogues, tool lists and index rows all come through here)."""
    text = _utf8(raw, path, lineno) if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        raise DataError(
            str(path),
            lineno,
            f"malformed JSON ({exc.msg} at column {exc.colno})",
            hint="one JSON object per line" if objects else None,
        ) from None
    if objects and not isinstance(value, dict):
        raise DataError(str(path), lineno, f"expected a JSON object, got {type(value).__name__}")
    return value


@contextlib.contextmanager
def readable_gzip(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a truncated or fake ``.gz`` file (and other read failures) into one line instead of a traceback."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        detail = "it ends before the end of the compressed stream" if isinstance(exc, EOFError) else str(exc)
        raise UserError(
            f"{path}: not a readable gzip file ({detail})", hint="re-create or re-download it, or decompress it first"
        ) from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON-lines file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def iter_text_lines(path: str | os.PathLike[str], *, what: str = "a text file") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line of a UTF-8 text file (``.gz`` accepted), streamed.

    The one place that opens line-oriented inputs (JSON lines, TSV qrels): a missing file, a directory, a broken
    gzip or a non-UTF-8 byte is one line naming the file (and line). ``text`` keeps its line ending.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected {what}")
    with readable_gzip(path), _open_binary(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            text = _utf8(raw, path, lineno)
            if text.lstrip("\ufeff").strip():
                yield lineno, text


def iter_json_lines(
    path: str | os.PathLike[str], *, objects: bool = True, allow_empty: bool = False, what: str = "JSON records"
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line of a JSON-lines file (``.gz`` accepted).

    ``objects``: every line must be a JSON object (records, corpus rows); otherwise any JSON value (a dialogue may
    be a list of turns).
    """
    path = Path(path)
    seen = 0
    for lineno, text in iter_text_lines(path, what="a JSON-lines file"):
        value = decode_json_line(text, path, lineno, objects=objects)
        seen += 1
        yield lineno, value
    if seen == 0 and not allow_empty:
        hint = "give a file with one record per line" if objects else None
        raise DataError(str(path), None, f"file is empty (no {what})", hint=hint)


def iter_jsonl(path: str | os.PathLike[str], *, allow_empty: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file of objects."""
    yield from iter_json_lines(path, objects=True, allow_empty=allow_empty)


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write ``rows`` as JSON lines; returns the number of rows."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
