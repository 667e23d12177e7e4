"""``llm-embedder build beir`` and graded relevance: BEIR folders (plain or .gz, qrels with or without a header)
become a corpus + records whose ``pos_grades`` make eval's nDCG graded; bad input is one located line."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from llm_embedder.builders.beir import BeirSummary, build_beir
from llm_embedder.cli.main import main
from llm_embedder.data.records import Record, load_records
from llm_embedder.errors import DataError
from llm_embedder.evaluation.metrics import compute_metrics, corpus_qrels, record_query_ids

CORPUS = [
    {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France.", "metadata": {}},
    {"_id": "d2", "title": "", "text": "Berlin is the capital of Germany."},
    {"_id": 3, "title": "Lyon", "text": "Lyon is a city in France."},
    {"_id": "d4", "text": "Madrid is the capital of Spain."},
]
QUERIES = [
    {"_id": "q1", "text": "capital of france"},
    {"_id": "q2", "text": "capital of germany"},
    {"_id": "q3", "text": "capital of italy"},
    {"_id": "q4", "text": "a query of another split"},
]
QRELS = [("q1", "3", 1), ("q1", "d1", 2), ("q1", "d4", 0), ("q2", "d2", 3), ("q3", "d4", 0)]
HEADER = "query-id\tcorpus-id\tscore\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def beir_folder(root: Path, *, gz: bool = False, header: bool = True, qrels: list | None = None) -> Path:
    """A tiny BEIR folder: 4 documents, 4 queries, graded test qrels (grade 0 rows included)."""
    ext = ".gz" if gz else ""
    _write(root / f"corpus.jsonl{ext}", "".join(json.dumps(r) + "\n" for r in CORPUS))
    _write(root / f"queries.jsonl{ext}", "".join(json.dumps(r) + "\n" for r in QUERIES))
    rows = qrels if qrels is not None else QRELS
    body = "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows)
    _write(root / "qrels" / f"test.tsv{ext}", (HEADER if header else "") + body)
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------ building
@pytest.mark.parametrize(("gz", "header"), [(False, True), (True, False), (True, True), (False, False)])
def test_build_writes_corpus_and_graded_records(tmp_path, gz, header):
    folder = beir_folder(tmp_path / "beir", gz=gz, header=header)
    out = tmp_path / "out"
    summary = build_beir(str(folder), str(out), task="qa")
    assert summary == BeirSummary(
        split="test", corpus_rows=4, records=2, queries=4, unjudged=1, no_relevant=1, qrels_rows=5, positives=3
    )
    assert read_jsonl(out / "corpus.jsonl") == [
        {"title": "Paris", "text": "Paris is the capital of France."},
        {"title": "", "text": "Berlin is the capital of Germany."},
        {"title": "Lyon", "text": "Lyon is a city in France."},
        {"title": "", "text": "Madrid is the capital of Spain."},
    ]
    # qa keys are "{title} {text}", stripped (an empty title adds no space); best grade first; grade 0 never a positive
    assert read_jsonl(out / "dev.jsonl") == [
        {
            "query": "capital of france",
            "pos": ["Paris Paris is the capital of France.", "Lyon Lyon is a city in France."],
            "neg": [],
            "pos_index": [0, 2],
            "pos_grades": [2, 1],
            "task": "qa",
            "query_id": "q1",
        },
        {
            "query": "capital of germany",
            "pos": ["Berlin is the capital of Germany."],
            "neg": [],
            "pos_index": [1],
            "pos_grades": [3],
            "task": "qa",
            "query_id": "q2",
        },
    ]
    records = load_records(out / "dev.jsonl", task="qa")
    assert [r.pos_grades for r in records] == [[2, 1], [3]]


def test_cli_prints_counts_and_other_splits_and_trec_columns(tmp_path, capsys):
    folder = beir_folder(tmp_path / "beir")
    # a dev split in TREC's four-column layout (query-id iteration corpus-id score), space separated
    _write(folder / "qrels" / "dev.tsv", "q4 0 d4 1\nq4 0 d2 0\n")
    out = tmp_path / "out"
    assert main(["build", "beir", str(folder), "--task", "qa", "--split", "dev", "-o", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"wrote 4 corpus rows and 1 qa records (1 relevant documents, split dev) to {out}; left out 3 of 4 queries "
        "without a relevant document (3 not judged in this split, 0 judged only grade <= 0)\n"
    )
    assert read_jsonl(out / "dev.jsonl") == [
        {
            "query": "a query of another split",
            "pos": ["Madrid is the capital of Spain."],
            "neg": [],
            "pos_index": [3],
            "pos_grades": [1],
            "task": "qa",
            "query_id": "q4",
        }
    ]


# ------------------------------------------------------------------ bad input: one line, nothing half-written
def _build_error(folder: Path, out: Path, capsys, *extra: str) -> str:
    assert main(["build", "beir", str(folder), "--task", "qa", "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.rstrip("\n")


def test_non_integer_grade_is_one_line(tmp_path, capsys):
    folder = beir_folder(tmp_path / "beir", qrels=[("q1", "d1", 2), ("q2", "d2", "high")])
    qrels = folder / "qrels" / "test.tsv"
    assert _build_error(folder, tmp_path / "out", capsys) == (
        f"llm-embedder build: error: {qrels}:3: field 'score': grade 'high' is not an integer "
        "(qrels grades are integers: 0 = not relevant, 1, 2, ... = more relevant)"
    )
    assert not (tmp_path / "out").exists()


def test_unknown_ids_are_one_line_and_leave_no_output(tmp_path, capsys):
    folder = beir_folder(tmp_path / "beir", header=False, qrels=[("q1", "d1", 2), ("q1", "d9", 1)])
    qrels = folder / "qrels" / "test.tsv"
    out = tmp_path / "out"
    assert _build_error(folder, out, capsys) == (
        f"llm-embedder build: error: {qrels}:2: field 'corpus-id': corpus id 'd9' is not in corpus.jsonl "
        "(use the qrels that belong to this folder's corpus (a subset must keep every judged document))"
    )
    assert list(out.iterdir()) == []  # the streamed corpus was never renamed into place

    folder = beir_folder(tmp_path / "beir2", qrels=[("q7", "d1", 1)])
    assert _build_error(folder, out, capsys) == (
        f"llm-embedder build: error: {folder / 'qrels' / 'test.tsv'}:2: field 'query-id': query id 'q7' is not in "
        "queries.jsonl (use the qrels that belong to this folder's queries)"
    )


def test_missing_files_and_splits_are_one_line(tmp_path, capsys):
    folder = beir_folder(tmp_path / "beir")
    assert _build_error(folder, tmp_path / "out", capsys, "--split", "train") == (
        f"llm-embedder build: error: {folder / 'qrels'}: no train.tsv or train.tsv.gz "
        "(splits in this folder: test; choose one with --split)"
    )
    (folder / "queries.jsonl").unlink()
    assert _build_error(folder, tmp_path / "out", capsys) == (
        f"llm-embedder build: error: {folder}: no queries.jsonl or queries.jsonl.gz (a BEIR folder has corpus.jsonl, "
        "queries.jsonl and qrels/<split>.tsv, each optionally .gz)"
    )


# ------------------------------------------------------------------ the record field
@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            {"pos_index": [0, 1], "pos_grades": [2, 0]},
            "f.jsonl:7: field 'pos_grades': must be a list of positive integers (the relevance grade of each "
            "pos_index row) (grade-0 documents are not positives: leave them out of pos/pos_index)",
        ),
        (
            {"pos_index": [0, 1], "pos_grades": [2]},
            "f.jsonl:7: field 'pos_grades': has 1 entries but 'pos_index' has 2",
        ),
        ({"pos_grades": [2]}, "f.jsonl:7: field 'pos_grades': needs 'pos_index' (one grade per pos_index row)"),
        (
            {"pos_index": [0], "pos_grades": [True]},
            "f.jsonl:7: field 'pos_grades': must be a list of positive integers (the relevance grade of each "
            "pos_index row) (grade-0 documents are not positives: leave them out of pos/pos_index)",
        ),
    ],
)
def test_pos_grades_is_validated(obj, message):
    with pytest.raises(DataError) as info:
        Record.from_dict({"query": "q", **obj}, path="f.jsonl", lineno=7)
    assert info.value.line() == message


def test_pos_grades_round_trips_as_a_known_field():
    obj = {"query": "q", "pos": ["a", "b"], "neg": [], "pos_index": [4, 2], "pos_grades": [3, 1], "qid": 9}
    record = Record.from_dict(obj)
    assert record.pos_grades == [3, 1] and record.extra == {"qid": 9}
    assert record.to_dict() == obj


# ------------------------------------------------------------------ graded nDCG
def test_graded_ndcg_matches_the_hand_computed_value(tmp_path):
    out = tmp_path / "out"
    build_beir(str(beir_folder(tmp_path / "beir")), str(out), task="qa")
    records = load_records(out / "dev.jsonl")
    qids = record_query_ids(records)
    qrels = corpus_qrels(records, qids, corpus_keys=["a", "b", "c", "d"])
    assert qrels == {"q1": {"0": 2, "2": 1}, "q2": {"1": 3}}
    # q1 ranks Lyon (grade 1), Berlin (0), Paris (2); q2 puts its only relevant document first
    run = {"q1": {"2": 3.0, "1": 2.0, "0": 1.0}, "q2": {"1": 2.0, "0": 1.0}}
    # q1: DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3); q2: 1
    q1 = 2 / (2 + 1 / math.log2(3))
    assert compute_metrics(run, qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx((q1 + 1) / 2, abs=1e-12)
    assert (q1 + 1) / 2 == pytest.approx(0.880094, abs=1e-6)

    # without pos_grades every positive is grade 1, exactly as before: q1 DCG = 1 + 1/2, ideal = 1 + 1/log2(3)
    for record in records:
        record.pos_grades = None
    binary = corpus_qrels(records, qids, corpus_keys=["a", "b", "c", "d"])
    assert binary == {"q1": {"0": 1, "2": 1}, "q2": {"1": 1}}
    q1_binary = 1.5 / (1 + 1 / math.log2(3))
    assert compute_metrics(run, binary, ["ndcg@10"])["ndcg@10"] == pytest.approx((q1_binary + 1) / 2, abs=1e-12)


# ------------------------------------------------------------------ the real MS MARCO subset, end to end
def test_msmarco_subset_builds_and_evaluates_with_bm25(data_dir, tmp_path, capsys):
    folder = data_dir / "raw" / "msmarco_subset"
    out = tmp_path / "msmarco"
    assert main(["build", "beir", str(folder), "--task", "qa", "-o", str(out)]) == 0
    assert "wrote 5000 corpus rows and 43 qa records (4102 relevant documents, split test)" in capsys.readouterr().out

    # the records' qrels, mapped back to BEIR ids, are exactly the raw graded qrels (all grades there are >= 1)
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        doc_ids = [json.loads(line)["_id"] for line in handle]
    with gzip.open(folder / "qrels" / "test.tsv.gz", "rt", encoding="utf-8") as handle:
        raw: dict[str, dict[str, int]] = {}
        for line in handle:
            qid, did, grade = line.split("\t")
            raw.setdefault(qid, {})[did] = int(grade)
    records = load_records(out / "dev.jsonl", task="qa")
    qrels = corpus_qrels(records, record_query_ids(records))
    assert {q: {doc_ids[int(row)]: g for row, g in docs.items()} for q, docs in qrels.items()} == raw

    report = tmp_path / "report"
    argv = ["eval", "--task", "qa", "--data", str(out / "dev.jsonl"), "--corpus", str(out / "corpus.jsonl")]
    assert main([*argv, "-r", "bm25", "--no-downstream", "--quiet", "-o", str(report)]) == 0
    results = json.loads((report / "qa.json").read_text(encoding="utf-8"))
    assert results["n_records"] == 43
    ndcg = results["results"]["bm25"]["ndcg@10"]
    assert 0.6 < ndcg < 0.85  # graded (measured 0.727); the same run with binary grades scores 0.975


def test_pipeline_candidate_cap_cuts_grades_with_their_rows():
    from llm_embedder.pipeline.build import cap_candidates

    record = {"query": "q", "pos": ["a", "b", "c"], "pos_index": [4, 5, 6], "pos_grades": [3, 2, 1], "neg": ["d"]}
    capped = cap_candidates(record, 2)
    assert capped["pos"] == ["a", "b"] and capped["pos_index"] == [4, 5] and capped["pos_grades"] == [3, 2]
    assert capped["neg"] == []
