"""The feedback log: live traffic turned into training records, the paper's method closed over a deployment.

Every ``augment`` appends, per source collection, what the retriever saw: the query, ALL the candidates it retrieved
(more than went into the prompt, so the LLM reward can later rank candidates the embedder put too low) and which of
them went into the prompt. A candidate is logged as its key (the task's key template filled: for qa ``"{title}
{text}"``), the text the embedder encoded and the prompt showed, so the exported records are scored and trained on
what is served. Every ``feedback`` appends the answer the LLM (or the user) finally gave. Exporting a
collection joins the two into records of the project's format (:mod:`llm_embedder.data.records`)::

    {"query": ..., "pos": [], "neg": [candidates...], "answers": [answer], "task": "qa", "query_id": augment id,
     "candidate_ids": [...], "in_prompt": [...], "collection": ...}

(for the chat memory: ``history`` instead of pos/neg, as ``build chat`` writes), so that ``llm-embedder score``
fills ``teacher_scores`` from the deployment's own LLM and ``llm-embedder train`` fine-tunes on it (records without
``pos`` take the teacher's best candidate as the positive).

Files, under ``DIR/feedback/``: ``<collection>.augments.jsonl`` and one ``answers.jsonl``; both append-only, one JSON
object per line, flushed and fsync'ed before the request is acknowledged. A line cut by a kill -9 is the last one
and is skipped (with its byte offset) when reading back, and the next append starts on a fresh line.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ANSWERS_FILE = "answers.jsonl"
AUGMENTS_SUFFIX = ".augments.jsonl"


#: how :meth:`FeedbackLog.record_augment` starts every line (``json.dumps`` of ``{"augment_id": uuid hex, ...}``)
_ID_PREFIX = re.compile(rb'\{"augment_id": "([0-9a-f]{32})", ')


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The complete lines of an append-only log: a torn last line (a killed process's write, never acknowledged)
    ends the reading."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                return
            yield raw


def _parse(raw: bytes) -> dict[str, Any] | None:
    """One line as a JSON object (``None`` for anything else)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The complete JSON objects of an append-only log (a torn last line from a crash is skipped)."""
    for raw in _complete_lines(path):
        value = _parse(raw)
        if value is not None:
            yield value


def _logged_augment_ids(path: Path) -> Iterator[str]:
    """The augment id of every complete line of an augment log, read from the line's start where the service wrote
    it, without parsing the candidates after it (a line of another shape is parsed). Why: the ids are rebuilt at
    every start, and parsing whole lines took 1.5 s per 100k augments (600 MB of log)."""
    for raw in _complete_lines(path):
        found = _ID_PREFIX.match(raw)
        if found is not None:
            yield found.group(1).decode("ascii")
            continue
        value = _parse(raw)
        if value is not None:
            yield str(value.get("augment_id"))


class AugmentIds:
    """The augment ids a log holds, in a compact form: it lives as long as the server and gains one id per augment.

    Ids as ``augment`` issues them (32 hex digits, a uuid4) are kept as two unsigned 64-bit halves in sorted numpy
    arrays - 16 bytes an id - with the newest few thousand in a small set until they are merged in; any other id in
    a plain set. Why: the former dict of str ids held ~200 bytes an id (the 32-character str, a dict slot and a
    list; 200 MB per million augments of a long-lived server); this holds ~19 (measured with tracemalloc).
    """

    #: ids held in the unsorted set before a merge into the sorted arrays (a merge costs O(n))
    MERGE_EVERY = 4096

    def __init__(self) -> None:
        self._hi = np.empty(0, dtype=np.uint64)
        self._lo = np.empty(0, dtype=np.uint64)
        self._recent: set[tuple[int, int]] = set()
        self._other: set[str] = set()

    @staticmethod
    def _halves(augment_id: str) -> tuple[int, int] | None:
        if len(augment_id) != 32:
            return None
        try:
            value = int(augment_id, 16)
        except ValueError:
            return None
        if augment_id != f"{value:032x}":  # upper case, "0x", "_" or a sign: keep the text as it is
            return None
        return value >> 64, value & 0xFFFFFFFFFFFFFFFF

    def add(self, augment_id: str) -> None:
        halves = self._halves(augment_id)
        if halves is None:
            self._other.add(augment_id)
            return
        self._recent.add(halves)
        if len(self._recent) >= self.MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        new = np.array(sorted(self._recent), dtype=np.uint64).reshape(-1, 2)
        hi = np.concatenate([self._hi, new[:, 0]])
        lo = np.concatenate([self._lo, new[:, 1]])
        order = np.lexsort((lo, hi))
        self._hi, self._lo = hi[order], lo[order]
        self._recent.clear()

    def __contains__(self, augment_id: object) -> bool:
        if not isinstance(augment_id, str):
            return False
        halves = self._halves(augment_id)
        if halves is None:
            return augment_id in self._other
        if halves in self._recent:
            return True
        hi, lo = np.uint64(halves[0]), np.uint64(halves[1])
        start, end = np.searchsorted(self._hi, hi, side="left"), np.searchsorted(self._hi, hi, side="right")
        return bool(np.any(self._lo[start:end] == lo))

    def __len__(self) -> int:
        return len(self._hi) + len(self._recent) + len(self._other)


class FeedbackLog:
    """Append-only, fsync'ed augment and answer logs under ``folder`` (thread-safe)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        #: the augment ids logged so far; rebuilt from the files so feedback works across restarts
        self._augments = AugmentIds()
        for path in sorted(self.folder.glob(f"*{AUGMENTS_SUFFIX}")):
            for augment_id in _logged_augment_ids(path):
                self._augments.add(augment_id)

    def _append(self, path: Path, entries: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                # a torn last line (kill -9 mid-write) must not swallow this entry: start on a fresh line
                with open(path, "rb") as handle:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def knows(self, augment_id: str) -> bool:
        with self._lock:
            return augment_id in self._augments

    def has(self, collection: str) -> bool:
        return (self.folder / f"{collection}{AUGMENTS_SUFFIX}").is_file()

    def record_augment(self, augment_id: str, entries: dict[str, dict[str, Any]]) -> None:
        """Log one augment: ``entries`` maps a collection name to its ``{query, task, candidates, ...}``."""
        with self._lock:
            for collection, entry in entries.items():
                self._append(self.folder / f"{collection}{AUGMENTS_SUFFIX}", [{"augment_id": augment_id, **entry}])
            self._augments.add(augment_id)

    def record_answer(self, augment_id: str, answer: str) -> None:
        with self._lock:
            self._append(self.folder / ANSWERS_FILE, [{"augment_id": augment_id, "answer": answer}])

    def records(self, collection: str) -> Iterator[dict[str, Any]]:
        """The collection's augments that got an answer, as records (the latest answer of an augment wins).

        An augment that retrieved fewer than two candidates is left out: one candidate teaches no ranking, and the
        trainer refuses a record it cannot build a group from.
        """
        answers = {str(e.get("augment_id")): e.get("answer") for e in _read_lines(self.folder / ANSWERS_FILE)}
        for entry in _read_lines(self.folder / f"{collection}{AUGMENTS_SUFFIX}"):
            answer = answers.get(str(entry.get("augment_id")))
            if isinstance(answer, str) and len(entry.get("candidates", [])) >= 2:
                yield to_record(entry, answer, collection)

    def counts(self, collection: str) -> tuple[int, int]:
        """``(augments logged, augments with an answer)`` for a collection."""
        answered = {str(e.get("augment_id")) for e in _read_lines(self.folder / ANSWERS_FILE)}
        total = with_answer = 0
        for entry in _read_lines(self.folder / f"{collection}{AUGMENTS_SUFFIX}"):
            total += 1
            with_answer += str(entry.get("augment_id")) in answered
        return total, with_answer


def to_record(entry: dict[str, Any], answer: str, collection: str) -> dict[str, Any]:
    """One logged augment + its answer as a record of the project's format (see the module docstring)."""
    # "key": the candidate as the task renders it (logs before 2026-11-30 kept the document's "text")
    candidates = [c["key"] if "key" in c else c["text"] for c in entry["candidates"]]
    record: dict[str, Any] = {"query": entry["query"]}
    if entry.get("history_task"):
        record["history"] = candidates  # chat memory: the candidates are the memory turns
    else:
        record["pos"] = []
        record["neg"] = candidates
    record.update(
        {
            "answers": [answer],
            "task": entry["task"],
            "query_id": entry["augment_id"],
            "candidate_ids": [c["id"] for c in entry["candidates"]],
            "in_prompt": entry.get("in_prompt", []),
            "collection": collection,
        }
    )
    return record
