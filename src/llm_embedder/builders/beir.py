"""``llm-embedder build beir``: a corpus and evaluation records from a BEIR-format folder, relevance grades kept.

Input ``DIR`` (the layout of the BEIR benchmark's downloads; every file may also be ``.gz``)::

    DIR/corpus.jsonl        {"_id": "d1", "title": "...", "text": "..."}     (title optional)
    DIR/queries.jsonl       {"_id": "q1", "text": "..."}
    DIR/qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score             (header line optional)

(TREC-style four-column qrels ``query-id iteration corpus-id score`` are read too.) Written to ``-o OUT_DIR``:

- ``corpus.jsonl``: ``{"title", "text"}`` rows in the input's order (row number = id, as every corpus here);
- ``dev.jsonl``: one record per query of the split with at least one document of grade > 0, in queries.jsonl
  order: ``pos`` = those documents rendered with the task's key template (best grade first, then qrels order),
  ``pos_index`` = their rows, ``pos_grades`` = their grades (so ``eval`` computes graded nDCG), ``neg`` = [],
  ``query_id`` = the BEIR query id. Evaluate with ``llm-embedder eval --task TASK --data OUT_DIR/dev.jsonl
  --corpus OUT_DIR/corpus.jsonl``; for training records, mine negatives with ``build negatives``.

Grade-0 (or negative) rows judge a document NOT relevant: they are never positives. Queries of queries.jsonl
with no relevant document in the split (BEIR folders list every split's queries in one file) are left out and
counted. A qrels row naming an unknown query or corpus id, or a grade that is not an integer, stops the build
with one line naming qrels file:line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_embedder.data.corpus import render_key
from llm_embedder.data.jsonl import iter_jsonl, iter_text_lines, write_jsonl
from llm_embedder.data.records import Record, write_records
from llm_embedder.errors import DataError, UserError
from llm_embedder.tasks.registry import TASKS
from llm_embedder.utils.templates import template_fields

_LAYOUT = "a BEIR folder has corpus.jsonl, queries.jsonl and qrels/<split>.tsv, each optionally .gz"
_INTEGER = re.compile(r"^[+-]?\d+$")
#: the corpus fields a BEIR row provides to a key template
_CORPUS_FIELDS = ("title", "text")


@dataclass(frozen=True)
class BeirSummary:
    """What a build wrote and what it left out (printed by the CLI, asserted by tests)."""

    split: str
    corpus_rows: int
    records: int
    #: queries in queries.jsonl
    queries: int
    #: queries with no qrels row in this split (in BEIR, usually queries of another split)
    unjudged: int
    #: queries judged in this split whose every row has grade <= 0
    no_relevant: int
    #: qrels rows read / rows with grade > 0 (the positives written)
    qrels_rows: int
    positives: int


@dataclass
class _Judgement:
    corpus_id: str
    grade: int
    lineno: int


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz`` (the plain file first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _required(folder: Path, name: str) -> Path:
    found = _find(folder, name)
    if found is None:
        raise UserError(f"{folder}: no {name} or {name}.gz", hint=_LAYOUT)
    return found


def _qrels_file(folder: Path, split: str) -> Path:
    found = _find(folder / "qrels", f"{split}.tsv")
    if found is not None:
        return found
    qrels_dir = folder / "qrels"
    splits = (
        sorted({p.name.split(".tsv")[0] for p in qrels_dir.iterdir() if ".tsv" in p.name}) if qrels_dir.is_dir() else []
    )
    hint = f"splits in this folder: {', '.join(splits)}; choose one with --split" if splits else _LAYOUT
    raise UserError(f"{qrels_dir}: no {split}.tsv or {split}.tsv.gz", hint=hint)


def _string_id(obj: dict[str, Any], path: Path, lineno: int) -> str:
    value = obj.get("_id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            str(path), lineno, "missing or not a string", field="_id", hint="every BEIR row needs a unique _id"
        )
    return str(value)


def _text(obj: dict[str, Any], name: str, path: Path, lineno: int, *, required: bool) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(str(path), lineno, "missing or not a string", field=name)
    return value


def _read_queries(path: Path) -> dict[str, str]:
    """BEIR query id -> text, in file order."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _string_id(obj, path, lineno)
        if qid in queries:
            raise DataError(
                str(path), lineno, f"repeats query id {qid!r} (first at line {first_line[qid]})", field="_id"
            )
        queries[qid] = _text(obj, "text", path, lineno, required=True)
        first_line[qid] = lineno
    return queries


def _columns(text: str) -> list[str]:
    line = text.lstrip("\ufeff").rstrip("\r\n")
    fields = line.split("\t")
    return fields if len(fields) > 1 else line.split()


def _read_qrels(path: Path, queries: dict[str, str]) -> dict[str, list[_Judgement]]:
    """Query id -> its judgements in file order; the header line (if any) skipped, query ids and grades checked."""
    judged: dict[str, list[_Judgement]] = {}
    seen: dict[tuple[str, str], int] = {}
    first = True
    for lineno, text in iter_text_lines(path, what="a qrels TSV file"):
        fields = [f.strip() for f in _columns(text)]
        if len(fields) not in (3, 4):
            raise DataError(
                str(path),
                lineno,
                f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(fields)}",
                hint="BEIR qrels lines are 'query-id<TAB>corpus-id<TAB>score'",
            )
        qid, cid, grade_text = (fields[0], fields[1], fields[2]) if len(fields) == 3 else (fields[0], *fields[2:])
        is_first, first = first, False
        if is_first and not _INTEGER.match(grade_text) and qid not in queries:
            continue  # the header line ("query-id  corpus-id  score")
        if not _INTEGER.match(grade_text):
            raise DataError(
                str(path),
                lineno,
                f"grade {grade_text!r} is not an integer",
                field="score",
                hint="qrels grades are integers: 0 = not relevant, 1, 2, ... = more relevant",
            )
        if qid not in queries:
            raise DataError(
                str(path),
                lineno,
                f"query id {qid!r} is not in queries.jsonl",
                field="query-id",
                hint="use the qrels that belong to this folder's queries",
            )
        if (qid, cid) in seen:
            raise DataError(
                str(path),
                lineno,
                f"repeats query {qid!r} / document {cid!r} (first at line {seen[qid, cid]})",
                hint="keep one grade per query and document",
            )
        seen[qid, cid] = lineno
        judged.setdefault(qid, []).append(_Judgement(cid, int(grade_text), lineno))
    return judged


def build_beir(folder: str, output_dir: str, *, task: str, split: str = "test") -> BeirSummary:
    """Write ``corpus.jsonl`` and ``dev.jsonl`` under ``output_dir`` from the BEIR folder ``folder``.

    The corpus is streamed (only ids and the positives' keys are held), so large BEIR corpora fit in memory; every
    check runs before the corpus file is renamed into place, so a bad qrels line leaves no half-built output.
    """
    key_template = TASKS.get(task).key_template
    missing = [name for name in template_fields(key_template) if name not in _CORPUS_FIELDS]
    if missing:
        raise UserError(
            f"task {task!r} renders keys with {key_template!r}, but BEIR corpus rows have only title and text",
            hint="use a task whose key template uses {title} and {text}",
        )
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory", hint=_LAYOUT)
    corpus_path = _required(root, "corpus.jsonl")
    queries_path = _required(root, "queries.jsonl")
    qrels_path = _qrels_file(root, split)

    queries = _read_queries(queries_path)
    judged = _read_qrels(qrels_path, queries)
    wanted = {j.corpus_id for judgements in judged.values() for j in judgements if j.grade > 0}
    if not wanted:
        raise UserError(
            f"{qrels_path}: no query has a document of grade > 0, so there is nothing to evaluate",
            hint="check the split (--split) and the grades",
        )
    rows: dict[str, int] = {}
    keys: dict[str, str] = {}

    def corpus_rows() -> Iterator[dict[str, str]]:
        for lineno, obj in iter_jsonl(corpus_path):
            cid = _string_id(obj, corpus_path, lineno)
            if cid in rows:
                raise DataError(str(corpus_path), lineno, f"repeats document id {cid!r}", field="_id")
            row = {
                "title": _text(obj, "title", corpus_path, lineno, required=False),
                "text": _text(obj, "text", corpus_path, lineno, required=True),
            }
            rows[cid] = len(rows)
            if cid in wanted:
                keys[cid] = render_key(key_template, row)
            yield row
        # still inside the atomic write: an unknown id leaves no corpus.jsonl behind
        unknown = min(
            (j for judgements in judged.values() for j in judgements if j.corpus_id not in rows),
            key=lambda j: j.lineno,
            default=None,
        )
        if unknown is not None:
            raise DataError(
                str(qrels_path),
                unknown.lineno,
                f"corpus id {unknown.corpus_id!r} is not in {corpus_path.name}",
                field="corpus-id",
                hint="use the qrels that belong to this folder's corpus (a subset must keep every judged document)",
            )

    out = Path(output_dir)
    corpus_count = write_jsonl(out / "corpus.jsonl", corpus_rows())

    records: list[Record] = []
    no_relevant = positives = 0
    for qid, query in queries.items():
        if qid not in judged:
            continue
        relevant = [j for j in judged[qid] if j.grade > 0]
        if not relevant:
            no_relevant += 1
            continue
        relevant.sort(key=lambda j: -j.grade)  # stable: qrels order within a grade
        positives += len(relevant)
        records.append(
            Record(
                query=query,
                pos=[keys[j.corpus_id] for j in relevant],
                neg=[],
                pos_index=[rows[j.corpus_id] for j in relevant],
                pos_grades=[j.grade for j in relevant],
                task=task,
                query_id=qid,
            )
        )
    write_records(out / "dev.jsonl", records)
    return BeirSummary(
        split=split,
        corpus_rows=corpus_count,
        records=len(records),
        queries=len(queries),
        unjudged=sum(qid not in judged for qid in queries),
        no_relevant=no_relevant,
        qrels_rows=sum(len(j) for j in judged.values()),
        positives=positives,
    )
