"""Data builders (chat, icl, tool, negatives): outputs round-trip through read_records, reproduce the shared data
from its raw sources, and bad input fails with one located line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llm_embedder.builders.chat import build_chat
from llm_embedder.builders.icl import build_icl
from llm_embedder.builders.negatives import mine_negatives, normalize_answer
from llm_embedder.builders.tool import build_tool
from llm_embedder.cli.main import main
from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import Record, load_records
from llm_embedder.errors import DataError, UserError
from llm_embedder.retrieval.bm25 import BM25Retriever
from llm_embedder.retrieval.dense import DenseRetriever

TOOL_FILES = ("G1_category", "G1_instruction", "G1_tool", "G2_category", "G2_instruction", "G3_instruction")


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ chat
def test_chat_from_msc_reproduces_the_dev_records(data_dir, tmp_path):
    out = tmp_path / "chat.jsonl"
    assert (
        main(
            [
                "build",
                "chat",
                str(data_dir / "raw/msc/session_2/test.txt.gz"),
                "-o",
                str(out),
                "--id-prefix",
                "s2-test-",
            ]
        )
        == 0
    )
    built = {r.query_id: r for r in load_records(out, task="chat")}
    dev = [r for r in load_records(data_dir / "tasks/chat/dev.jsonl") if str(r.query_id).startswith("s2-test-")]
    assert len(dev) > 200
    for record in dev:
        mine = built[record.query_id]
        assert (mine.query, mine.answers, mine.history) == (record.query, record.answers, record.history)
        assert mine.uses_history and mine.candidates == record.history


def test_chat_generic_formats_round_trip(tmp_path):
    source = tmp_path / "dialogues.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "d1", "turns": ["hi there", "hello", "how are you?", "fine,  thanks", "bye"]}),
                json.dumps(
                    [
                        {"role": "user", "content": "I like tea."},
                        {"role": "user", "content": "Green tea."},
                        {"role": "assistant", "content": "Nice!"},
                        {"role": "user", "content": "And you?"},
                        {"role": "assistant", "content": "Coffee."},
                    ]
                ),
                json.dumps({"sessions": [["I have a cat", "cute"], ["Remember my pet?", "Your cat!"]]}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "chat.jsonl"
    assert build_chat([str(source)], str(out)) == 3
    records = {r.query_id: r for r in load_records(out)}
    assert records["d1-1"].query == "how are you?" and records["d1-1"].answers == ["fine, thanks"]
    assert records["d1-1"].history == ["Speaker 1: hi there\nSpeaker 2: hello"]
    # consecutive turns of one speaker are merged before pairing
    assert records["dialogues-1-1"].history == ["Speaker 1: I like tea. Green tea.\nSpeaker 2: Nice!"]
    assert records["dialogues-2-0"].history == ["Speaker 1: I have a cat\nSpeaker 2: cute"]
    assert all(r.task == "chat" and r.pos == [] and r.neg == [] for r in records.values())
    # all pairs with min_history 0 / sampling one pair per dialogue
    assert build_chat([str(source)], str(out), min_history=0) == 5
    assert build_chat([str(source)], str(out), pairs_per_dialogue=1, min_history=0, seed=3) == 3


def test_chat_bad_input_is_located(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["a", "b"]}\n{"turns": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'turns'"):
        build_chat([str(bad)], str(tmp_path / "o.jsonl"))
    bad.write_text('{"what": 1}\n', encoding="utf-8")
    assert main(["build", "chat", str(bad), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------ icl
CB_TEMPLATE = "{premise}\nquestion: {hypothesis}. true, false, or neither?"


def test_icl_pool_reproduces_the_shared_corpus_and_records_round_trip(data_dir, tmp_path):
    pool = tmp_path / "cb.jsonl"
    query = tmp_path / "cb_val.jsonl"
    pool.write_bytes(gzip.decompress((data_dir / "raw/cbu/cb/train.jsonl.gz").read_bytes()))
    query.write_bytes(gzip.decompress((data_dir / "raw/cbu/cb/val.jsonl.gz").read_bytes()))
    out = tmp_path / "icl"
    assert (
        main(
            [
                "build",
                "icl",
                f"cb={pool}",
                "--queries",
                f"cb={query}",
                "-o",
                str(out),
                "--input-template",
                CB_TEMPLATE,
                "--output-template",
                "{label}",
                "--label-map",
                "entailment=true,contradiction=false,neutral=neither",
                "-k",
                "8",
            ]
        )
        == 0
    )
    corpus = read_jsonl(out / "corpus.jsonl")
    shared = read_jsonl(data_dir / "tasks/icl/corpus.jsonl")[14780:15030]  # the README's CB rows
    assert [r["text"] for r in corpus] == [r["text"] for r in shared]
    records = load_records(out / "records.jsonl")
    dev = {r.query: r for r in load_records(data_dir / "tasks/icl/dev.jsonl") if str(r.query_id).startswith("cb-")}
    assert len(records) == 56
    for record in records:
        assert len(record.neg) == 8 and record.options == ["true", "false", "neither"]
        assert all(corpus[i]["text"] == text for i, text in zip(record.neg_index, record.neg, strict=True))
        assert all(not text.startswith(record.query + "\n") for text in record.neg)
        if record.query in dev:
            assert record.answers == dev[record.query].answers and record.options == dev[record.query].options


def test_icl_leave_one_out_stays_within_the_task(tmp_path):
    a = jsonl(
        tmp_path / "a.jsonl",
        [{"input": f"alpha word{i} shared", "output": "yes" if i % 2 else "no"} for i in range(12)]
        + [{"input": "alpha word1 shared", "output": "maybe"}],
    )
    b = jsonl(tmp_path / "b.jsonl", [{"input": f"beta word{i} shared", "output": str(i)} for i in range(30)])
    rows, count = build_icl([str(a), f"other={b}"], str(tmp_path / "out"), k=5, max_options=10, max_queries_per_task=6)
    assert rows == 43 and count == 12
    corpus = read_jsonl(tmp_path / "out/corpus.jsonl")
    for record in load_records(tmp_path / "out/records.jsonl"):
        task = record.query_id.split("-")[0]
        assert {corpus[i]["task"] for i in record.neg_index} == {"a" if task == "a" else "other"}
        assert all(not corpus[i]["text"].startswith(record.query + "\n") for i in record.neg_index)
        assert len(record.neg) == 5
        assert record.options == (["maybe", "no", "yes"] if task == "a" else None)  # 30 labels: not a class set
    with pytest.raises(UserError, match=r"a.jsonl:1: field 'missing'"):
        build_icl([str(a)], str(tmp_path / "x"), input_template="{input} {missing}")


# ------------------------------------------------------------------ tool
def test_tool_builder_reproduces_the_shared_tool_data(data_dir, tmp_path):
    inputs = [str(data_dir / f"raw/stabletoolbench/test_instruction/{name}.json.gz") for name in TOOL_FILES]
    rows, count = build_tool(inputs, str(tmp_path / "tool"), k=20, stemmer=None)  # the shared data: no stemming
    assert rows == 2490 and count == 765
    assert read_jsonl(tmp_path / "tool/corpus.jsonl") == read_jsonl(data_dir / "tasks/tool/corpus.jsonl")
    built = {r.query_id: r for r in load_records(tmp_path / "tool/records.jsonl", task="tool")}
    for split in ("train", "dev"):
        for record in load_records(data_dir / f"tasks/tool/{split}.jsonl"):
            mine = built[record.query_id]
            assert (mine.pos_index, mine.neg_index, mine.pos, mine.neg) == (
                record.pos_index,
                record.neg_index,
                record.pos,
                record.neg,
            )


def test_tool_builder_jsonl_catalog_and_errors(tmp_path):
    def api(tool, name, desc):
        return {
            "category_name": "Demo",
            "tool_name": tool,
            "api_name": name,
            "api_description": desc,
            "required_parameters": [{"name": "city", "type": "STRING"}],
            "optional_parameters": [],
            "template_response": {"temp": "float"},
        }

    requests = jsonl(
        tmp_path / "requests.jsonl",
        [
            {
                "query": "What is the weather in Paris?",
                "query_id": "w1",
                "api_list": [
                    api("Weather", "current", "current weather for a city"),
                    api("Maps", "route", "driving route"),
                ],
                "relevant APIs": [["Weather", "current"]],
            },
        ],
    )
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps([api("Weather", "forecast", "weather forecast for a city"), api("Stocks", "quote", "stock price")])
    )
    assert (
        main(
            [
                "build",
                "tool",
                str(requests),
                "--catalog",
                str(catalog),
                "-o",
                str(tmp_path / "out"),
                "-k",
                "2",
                "--with-return-schema",
            ]
        )
        == 0
    )
    corpus = read_jsonl(tmp_path / "out/corpus.jsonl")
    assert corpus[0]["text"] == (
        'Demo, Weather, current, current weather for a city, required_params: [{"name": '
        '"city", "type": "STRING"}], optional_params: [], return_schema: {"temp": "float"}'
    )
    (record,) = load_records(tmp_path / "out/records.jsonl")
    assert record.pos_index == [0] and record.neg_index == [1, 2]  # api_list first, then BM25 (the forecast API)
    bad = jsonl(
        tmp_path / "bad.jsonl", [{"query": "q", "api_list": [api("A", "x", "d")], "relevant APIs": [["A", "y"]]}]
    )
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'relevant APIs'"):
        build_tool([str(bad)], str(tmp_path / "bad_out"))


# ------------------------------------------------------------------ negatives
def test_negatives_exclude_positives_and_answers(data_dir, tmp_path):
    source = tmp_path / "qa.jsonl"
    with open(data_dir / "tasks/qa/dev.jsonl", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(25)]
    records = [json.loads(line) for line in lines]
    records[0].pop("pos_index")  # positives found by their text too
    records[1]["teacher_scores"] = [0.0] * (len(records[1]["pos"]) + len(records[1]["neg"]))
    jsonl(source, records)
    out = tmp_path / "mined.jsonl"
    assert (
        main(
            [
                "build",
                "negatives",
                "--task",
                "qa",
                "--corpus",
                str(data_dir / "tasks/qa/corpus.jsonl"),
                "--retriever",
                "bm25",
                "-k",
                "10",
                "--exclude-answers",
                str(source),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    corpus = Corpus.from_file(data_dir / "tasks/qa/corpus.jsonl", "{title} {text}")
    mined = load_records(out, task="qa")
    assert len(mined) == 25 and mined[1].teacher_scores is None
    assert mined[0].pos_index == [corpus.keys.index(records[0]["pos"][0])]
    for record in mined:
        assert len(record.neg) == 10 and len(set(record.neg_index)) == 10
        assert not set(record.neg_index) & set(record.pos_index) and not set(record.neg) & set(record.pos)
        assert [corpus[i] for i in record.neg_index] == record.neg
        answers = [normalize_answer(a) for a in record.answers]
        assert not any(a in normalize_answer(text) for a in answers for text in record.neg)


def test_negatives_with_an_embedder(embedder):
    keys = [
        "Paris is the capital of France.",
        "Berlin is the capital of Germany.",
        "Bananas are yellow.",
        "The Eiffel Tower is in Paris.",
        "Rome is the capital of Italy.",
        "Cats purr when happy.",
    ]
    corpus = Corpus.from_texts(keys)
    record = Record(query="What is the capital of France?", pos=[keys[0]], neg=[], pos_index=[0], task="qa")
    (mined,) = mine_negatives([record], corpus, DenseRetriever(embedder, "qa", keys), k=3, skip_top=1)
    assert 0 not in mined.neg_index and len(mined.neg_index) == 3
    full = mine_negatives(
        [Record(query=record.query, pos=[keys[0]], pos_index=[0])], corpus, DenseRetriever(embedder, "qa", keys), k=4
    )[0]
    assert mined.neg_index == full.neg_index[1:]  # --skip-top drops the best non-positive hit
    (via_bm25,) = mine_negatives([Record(query="capital", pos=[keys[1]])], corpus, BM25Retriever(keys), k=5)
    assert set(via_bm25.neg_index) == {0, 4}  # only rows sharing a term with the query, never the positive


def test_builders_write_atomically(tmp_path, monkeypatch):
    """A builder that fails half-way leaves the previous output untouched (write_jsonl is atomic)."""
    out = tmp_path / "chat.jsonl"
    out.write_text("previous\n")
    source = jsonl(tmp_path / "d.jsonl", [{"turns": ["a", "b", "c", "d"]}])
    import llm_embedder.builders.chat as chat

    def boom(path, records):
        from llm_embedder.data.jsonl import write_jsonl

        def rows():
            yield next(iter(records)).to_dict()
            raise RuntimeError("killed")

        return write_jsonl(path, rows())

    monkeypatch.setattr(chat, "write_records", boom)
    with pytest.raises(RuntimeError):
        build_chat([str(source)], str(out))
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "d.jsonl"]  # no temporary file left
