"""Corpus files (JSON lines, ``.gz`` accepted) as indexed rows: one scan for byte offsets and a checksum, random
access to rows by offset, and the check that a corpus has not changed since it was indexed."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from llm_embedder.data.jsonl import decode_json_line, readable_gzip
from llm_embedder.errors import DataError, UserError
from llm_embedder.retrieval.folder import sha256_file

OFFSETS_FILE = "offsets.npy"


@dataclass
class CorpusScan:
    """A corpus file's fingerprint and the byte offset of each row (row = non-blank line)."""

    path: str
    rows: int
    bytes: int
    sha256: str
    offsets: np.ndarray  # int64 (rows,)
    linenos: np.ndarray  # int64 (rows,), 1-based, for error messages

    def fingerprint(self) -> dict[str, Any]:
        # mtime_ns: a cheap first test at search time of whether the file may have changed (then the checksum decides)
        mtime_ns = Path(self.path).stat().st_mtime_ns if Path(self.path).is_file() else None
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256, "mtime_ns": mtime_ns}


def _open_corpus(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def scan_corpus(path: str | os.PathLike[str]) -> CorpusScan:
    """One streaming pass over a JSON-lines corpus: row offsets plus a sha256 of the (uncompressed) bytes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found")
    digest = hashlib.sha256()
    offsets: list[int] = []
    linenos: list[int] = []
    position = 0
    with readable_gzip(path), _open_corpus(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            digest.update(raw)
            if raw.strip() and raw.strip() != b"\xef\xbb\xbf":
                offsets.append(position)
                linenos.append(lineno)
            position += len(raw)
    if not offsets:
        raise DataError(str(path), None, "corpus is empty (no JSON rows)", hint="one JSON object per line")
    return CorpusScan(
        path=str(path.resolve()),
        rows=len(offsets),
        bytes=position,
        sha256=digest.hexdigest(),
        offsets=np.asarray(offsets, dtype=np.int64),
        linenos=np.asarray(linenos, dtype=np.int64),
    )


def corpus_prefix_sha256(path: str | os.PathLike[str], nbytes: int) -> str:
    """sha256 of the first ``nbytes`` (uncompressed) bytes: tells whether rows were only appended since."""
    path = Path(path)
    if path.suffix != ".gz":
        return sha256_file(path, nbytes)
    digest = hashlib.sha256()
    left = nbytes
    with gzip.open(path, "rb") as handle:
        while left > 0:
            chunk = handle.read(min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _parse_row(raw: bytes, path: str, lineno: int | None) -> dict[str, Any]:
    return decode_json_line(raw, path, lineno)


def read_corpus_rows(scan: CorpusScan, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows ``start:stop`` of a scanned corpus (seeks to the first; reads sequentially)."""
    path = Path(scan.path)
    out: list[dict[str, Any]] = []
    if start >= stop:
        return out
    with _open_corpus(path) as handle:
        handle.seek(int(scan.offsets[start]))
        row = start
        while row < stop:
            raw = handle.readline()
            if not raw:
                raise DataError(scan.path, None, f"ended before row {row}", hint="the corpus changed during the build")
            if not raw.strip() or raw.strip() == b"\xef\xbb\xbf":
                continue
            out.append(_parse_row(raw, scan.path, int(scan.linenos[row])))
            row += 1
    return out


def corpus_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a corpus file's (uncompressed) bytes, as recorded by :func:`scan_corpus`."""
    path = Path(path)
    if path.suffix != ".gz":
        return sha256_file(path)
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CorpusRows:
    """Random access to the rows of a corpus file through saved byte offsets (no need to load the corpus).

    ``recorded`` is the corpus fingerprint saved at indexing time (``bytes``, ``sha256``, ``mtime_ns``): a file
    whose size or modification time differs is checksummed, and a changed corpus is one clear line instead of the
    "malformed JSON" or wrong rows that stale offsets would give.
    """

    def __init__(
        self, path: str | os.PathLike[str], offsets: np.ndarray, recorded: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.offsets = offsets
        self.recorded = recorded or {}
        if not self.path.is_file():
            raise UserError(
                f"corpus {self.path} (recorded in the index) not found", hint="pass --corpus with its new location"
            )
        stat = self.path.stat()
        size_differs = self.path.suffix != ".gz" and "bytes" in self.recorded and stat.st_size != self.recorded["bytes"]
        mtime = self.recorded.get("mtime_ns")
        if size_differs or (mtime is not None and stat.st_mtime_ns != mtime):
            self.check_unchanged()

    def check_unchanged(self) -> None:
        """Raise the one-line "corpus changed" error when the file's checksum differs from the recorded one."""
        old = self.recorded.get("sha256")
        if not old:
            return
        now = corpus_sha256(self.path)
        if now != old:
            raise UserError(
                f"{self.path}: corpus changed since indexing (checksum {now[:16]}, indexed {old[:16]})",
                hint="rebuild the index (`llm-embedder index --overwrite`), or pass --corpus with the indexed file",
            )

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def get(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The rows, in the order asked; read in file order (a .gz file can only seek forward cheaply)."""
        found: dict[int, dict[str, Any]] = {}
        with _open_corpus(self.path) as handle:
            for row in sorted({int(r) for r in rows}):
                if not 0 <= row < len(self):
                    raise UserError(f"corpus row {row} out of range (the index knows {len(self)} rows)")
                handle.seek(int(self.offsets[row]))
                try:
                    found[row] = _parse_row(handle.readline(), f"{self.path} (row {row})", None)
                except DataError:
                    self.check_unchanged()  # an edit the size/time test missed: say so rather than "malformed"
                    raise
        return [found[int(r)] for r in rows]
