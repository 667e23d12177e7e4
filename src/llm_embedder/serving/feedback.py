"""The feedback log: live traffic turned into training records, the paper's method closed over a deployment.

Every ``augment`` appends, per source collection, what the retriever saw: the query, ALL the candidates it retrieved
(more than went into the prompt, so the LLM reward can later rank candidates the embedder put too low) and which of
them went into the prompt. Every ``feedback`` appends the answer the LLM (or the user) finally gave. Exporting a
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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ANSWERS_FILE = "answers.jsonl"
AUGMENTS_SUFFIX = ".augments.jsonl"


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The complete JSON objects of an append-only log (a torn last line from a crash is skipped)."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                return  # torn write of a killed process: never acknowledged
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(value, dict):
                yield value


class FeedbackLog:
    """Append-only, fsync'ed augment and answer logs under ``folder`` (thread-safe)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        #: augment id -> collections it logged to; rebuilt from the files so feedback works across restarts
        self._augments: dict[str, list[str]] = {}
        for path in sorted(self.folder.glob(f"*{AUGMENTS_SUFFIX}")):
            name = path.name[: -len(AUGMENTS_SUFFIX)]
            for entry in _read_lines(path):
                self._augments.setdefault(str(entry.get("augment_id")), []).append(name)

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
            self._augments[augment_id] = list(entries)

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
    candidates = [c["text"] for c in entry["candidates"]]
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
