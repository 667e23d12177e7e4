"""Records and corpora: every shared data file loads unchanged; every kind of bad line is one located error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_embedder import Corpus, DataError, Record, UserError, load_records, read_records, write_records
from llm_embedder.tasks.registry import TASKS

TASK_NAMES = ("qa", "convsearch", "chat", "lrlm", "icl", "tool")
SPLITS = [(task, split) for task in TASK_NAMES for split in ("train", "dev")]
CORPUS_TASKS = ("qa", "convsearch", "icl", "tool")


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


@pytest.mark.parametrize("task", TASK_NAMES)
def test_toy_files_load_and_round_trip(data_dir, tmp_path, task):
    path = data_dir / "toy" / f"{task}.jsonl"
    records = load_records(path)
    assert len(records) == _count_lines(path) == 8
    for record in records:
        assert record.task == task and record.query
        assert record.source and record.source.startswith(f"{path}:")
        if record.teacher_scores is not None:
            assert len(record.teacher_scores) == len(record.candidates)
    # unknown fields of the reference (pos_scores, context, qid ...) survive a write/read cycle unchanged
    out = tmp_path / f"{task}.jsonl"
    assert write_records(out, records) == 8
    with open(path, encoding="utf-8") as handle:
        originals = [json.loads(line) for line in handle if line.strip()]
    assert [r.to_dict() for r in load_records(out)] == originals


def test_toy_chat_candidates_are_the_history(data_dir):
    record = load_records(data_dir / "toy" / "chat.jsonl")[0]
    assert record.uses_history and record.num_pos == 0
    assert record.candidates == record.history
    tool = load_records(data_dir / "toy" / "tool.jsonl")[0]
    assert tool.id == tool.extra["qid"]


@pytest.mark.parametrize(("task", "split"), SPLITS)
def test_task_files_load(data_dir, task, split):
    path = data_dir / "tasks" / task / f"{split}.jsonl"
    records = load_records(path)
    assert len(records) == _count_lines(path) > 0
    assert {r.task for r in records} == {task}
    assert len({r.id for r in records}) == len(records), "query_id is unique within a task file"
    for record in records:
        if record.pos_index is not None:
            assert len(record.pos_index) == len(record.pos)
        assert len(record.candidates) > 0
    if task == "chat":
        assert all(r.uses_history for r in records)
    if task == "icl":
        assert all(r.options for r in records)
    if task != "tool":
        assert all(r.answers for r in records)


@pytest.mark.parametrize("task", CORPUS_TASKS)
def test_corpus_rows_render_to_the_records_keys(data_dir, task):
    """README: every pos/neg string equals its corpus row rendered with the task's key template."""
    spec = TASKS.get(task)
    corpus = Corpus.from_file(data_dir / "tasks" / task / "corpus.jsonl", spec.key_template)
    assert len(corpus) == _count_lines(data_dir / "tasks" / task / "corpus.jsonl")
    for record in read_records(data_dir / "tasks" / task / "dev.jsonl"):
        for texts, rows in ((record.pos, record.pos_index), (record.neg, record.neg_index)):
            assert rows is not None and len(rows) == len(texts)
            for text, row in zip(texts, rows, strict=True):
                corpus.check_index(row)
                assert corpus[row] == text.strip()


def test_corpus_missing_template_field_names_row_and_field(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"title": "A", "text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: field 'title': missing"):
        Corpus.from_file(path, "{title} {text}")
    assert Corpus.from_file(path, "{text}").keys == ["a", "b"]
    with pytest.raises(UserError, match="out of range"):
        Corpus.from_texts(["a"]).check_index(1)


# ---------------------------------------------------------------------- validation: one located line each
GOOD = '{"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}'
BAD_FILES = {
    "malformed": (f'{GOOD}\n{{"query": "q", \n', r":2: malformed JSON"),
    "missing_query": (f'{GOOD}\n{GOOD}\n{{"pos": ["p"]}}\n', r":3: field 'query': missing"),
    "teacher_scores": (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [0.1, 0.2, 0.3]}\n',
        r":1: field 'teacher_scores': has 3 scores but the record has 2 candidates \(pos\+neg\)",
    ),
    "unknown_task": ('{"query": "q", "task": "nope"}\n', r":1: field 'task': unknown task 'nope'"),
    "not_a_list": ('{"query": "q", "pos": "p"}\n', r":1: field 'pos': must be a list of strings"),
    "query_type": ('{"query": 3}\n', r":1: field 'query': must be a string"),
    "array_line": ("[1, 2]\n", r":1: expected a JSON object"),
    "nan_score": (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [NaN, 0.2]}\n',
        r":1: field 'teacher_scores': score 1 is NaN, not a finite number \(rescore the record",
    ),
    "inf_score": (
        f'{GOOD}\n{{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [0.1, Infinity]}}\n',
        r":2: field 'teacher_scores': score 2 is Infinity, not a finite number",
    ),
    "minus_inf_score": (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [-Infinity, 0.2]}\n',
        r":1: field 'teacher_scores': score 1 is -Infinity, not a finite number",
    ),
    "overflowing_score": (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [1e999, 0.2]}\n',
        r":1: field 'teacher_scores': score 1 is Infinity, not a finite number",
    ),
    "string_score": (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": ["0.1", 0.2]}\n',
        r":1: field 'teacher_scores': must be a list of numbers",
    ),
    "negative_index": (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_index": [-1]}\n',
        r":1: field 'pos_index': must be a list of non-negative integers",
    ),
    "bool_query_id": ('{"query": "q", "query_id": true}\n', r":1: field 'query_id': must be an integer or a string"),
    "empty": ("\n\n", r"file is empty"),
}


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / f"{name}.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_one_located_error(tmp_path, name):
    content, pattern = BAD_FILES[name]
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError, match=pattern) as info:
        load_records(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_non_utf8_file_names_the_line(tmp_path):
    path = _write(tmp_path, "latin1", GOOD.encode() + b"\n" + '{"query": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8") as info:
        load_records(path)
    assert "re-encode" in str(info.value)


def test_task_override_and_unknown_override(tmp_path):
    path = _write(tmp_path, "plain", f"{GOOD}\n")
    assert load_records(path, task="tool")[0].task == "tool"
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_records(path, task="nope")


def test_bom_and_blank_lines_are_tolerated(tmp_path):
    path = _write(tmp_path, "bom", "\ufeff" + GOOD + "\n\n" + GOOD + "\n")
    records = load_records(path)
    assert len(records) == 2 and records[1].source == f"{path}:3"


def test_record_round_trip_keeps_extra_fields():
    obj = {"query": "q", "pos": ["p"], "neg": [], "teacher_scores": [1], "qid": 7, "context": "c"}
    record = Record.from_dict(obj)
    assert record.teacher_scores == [1.0] and record.id == 7
    assert record.to_dict() == {**obj, "teacher_scores": [1.0]}


def test_skip_invalid_collects_bad_records_and_keeps_the_rest(tmp_path):
    nan = '{"query": "bad", "pos": ["p"], "neg": ["n"], "teacher_scores": [NaN, 0.2]}'
    path = _write(tmp_path, "mixed", f'{GOOD}\n{nan}\n{GOOD}\n{{"query": 3}}\n')
    skipped: list[DataError] = []
    records = load_records(path, skipped=skipped)
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]
    assert [str(e) for e in skipped] == [
        f"{path}:2: field 'teacher_scores': score 1 is NaN, not a finite number (rescore the record (llm-embedder "
        "score) or remove it; --skip-invalid skips such records)",
        f"{path}:4: field 'query': must be a string, got int",
    ]
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: field 'teacher_scores'"):
        load_records(path)  # without the list, the first bad record stops the read
