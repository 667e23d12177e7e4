"""`llm-embedder build lrlm`: long-range LM records from plain text, in the development data's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_embedder.builders.lrlm import LrlmOptions, build_lrlm_records, chunk_text
from llm_embedder.cli.main import main
from llm_embedder.data.records import load_records

#: a long, stable text every Python 3.11 installation has (the development data uses it too)
TEXT = Path(json.__file__).with_name("decoder.py")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llm_embedder.lm import resolve_lm

    return AutoTokenizer.from_pretrained(resolve_lm("smollm2"))


def test_chunks_partition_the_text_at_token_boundaries(tokenizer):
    text = TEXT.read_text(encoding="utf-8")
    chunks = chunk_text(tokenizer, text, 32)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(chunks) == text
    assert len(chunks) == -(-len(ids) // 32)
    # each chunk re-tokenises to (almost always exactly) its own 32 tokens
    exact = sum(
        tokenizer(c, add_special_tokens=False)["input_ids"] == ids[32 * i : 32 * (i + 1)] for i, c in enumerate(chunks)
    )
    assert exact >= 0.9 * len(chunks)


def test_records_follow_the_development_format(tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short to make a record", encoding="utf-8")
    options = LrlmOptions(chunk_tokens=32, max_candidates=5, every=3, min_history=4)
    records, summary = build_lrlm_records([TEXT, short], tokenizer, options)
    chunks = chunk_text(tokenizer, TEXT.read_text(encoding="utf-8"), 32)
    assert summary.documents == 2 and summary.short_documents == 1 and summary.records == len(records) > 3
    positions = [int(r["query_id"].rsplit("#", 1)[1]) for r in records]
    assert positions == list(range(4, len(chunks) - 1, 3))
    for record, i in zip(records, positions, strict=True):
        assert record["query_id"] == f"{TEXT}#{i}" and record["task"] == "lrlm" and record["pos"] == []
        assert record["query"] == chunks[i] and record["answers"] == [chunks[i + 1]]
        assert record["neg"] == chunks[max(0, i - 5) : i]  # earlier chunks, document order
    # same keys as the shipped development records
    assert set(records[0]) == {"query", "answers", "pos", "neg", "task", "query_id"}


def test_cli_builds_then_scores(tmp_path, capsys, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path / "lrlm.jsonl"
    code = main(
        ["build", "lrlm", str(TEXT), "-o", str(out), "--chunk-tokens", "64", "--every", "20", "--max-candidates", "3"]
    )
    assert code == 0
    assert "lrlm records from 1 documents" in capsys.readouterr().err
    records = load_records(out)
    assert records and all(r.task == "lrlm" and 1 <= len(r.neg) <= 3 for r in records)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    scored = tmp_path / "scored.jsonl"
    assert main(["score", str(out), "-o", str(scored), "--lm", str(tmp_path / "lm"), "--no-progress"]) == 0
    rows = load_records(scored)
    assert [r.query_id for r in rows] == [r.query_id for r in records]
    assert all(len(r.teacher_scores) == len(r.neg) for r in rows)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["build", "lrlm", str(missing), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.txt: file not found")
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    assert main(["build", "lrlm", str(short), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no records: every document is shorter than 6 chunks" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline \xff two\n")
    assert main(["build", "lrlm", str(bad), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.txt:2: not valid UTF-8" in capsys.readouterr().err
    assert main(["build", "lrlm", str(short), "-o", str(tmp_path / "o.jsonl"), "--every", "0"]) == 2
    assert "--every must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
