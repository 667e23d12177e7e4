"""Reward scoring never writes a non-finite score, and a huge text field is cut by characters before tokenising."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.cli.main import main
from llm_embedder.data.records import Record
from llm_embedder.errors import DataError
from llm_embedder.lm.likelihood import char_budget, max_token_chars
from llm_embedder.reward import RewardScorer
from llm_embedder.reward import scorer as scorer_module
from tests.test_reward import lm_folder, model, tokenizer  # noqa: F401 - shared fixtures

GOOD = {"query": "capital of France?", "pos": ["Paris is in France."], "neg": ["Cats purr."], "answers": ["Paris"]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_non_finite_reward_stops_the_run_naming_the_record(tmp_path, capsys, lm_folder, monkeypatch):  # noqa: F811
    """The LM returns NaN for one candidate of the second record: exit 2, one line, nothing written."""
    real = scorer_module.score_requests
    calls = []

    def nan_for_cats(lm, requests, **kwargs):  # --chunk-size 1: one call per record
        calls.append(len(requests))
        sums, counts = real(lm, requests, **kwargs)
        if len(calls) == 2:
            sums[1] = np.nan  # the second record's second candidate ("Cats purr.")
        return sums, counts

    monkeypatch.setattr(scorer_module, "score_requests", nan_for_cats)
    source = write_jsonl(tmp_path / "in.jsonl", [{**GOOD, "neg": ["Dogs bark."]}, {**GOOD, "query_id": "q2"}])
    out = tmp_path / "out.jsonl"
    args = ["score", str(source), "-o", str(out), "--lm", str(lm_folder), "--task", "qa", "--chunk-size", "1"]
    assert main([*args, "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llm-embedder")]
    assert len(err) == 1, err
    assert (
        f"{source}:2: field 'teacher_scores': the LM gave a non-finite reward (nan) for candidate 1 "
        "(query_id 'q2'); 1 of 2 candidates affected, nothing was written for this record "
        "(check the LM (weights, dtype: rerun with --dtype fp32))"
    ) in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_score_prepared_refuses_every_non_finite_value(tokenizer, model, monkeypatch, value):  # noqa: F811
    monkeypatch.setattr(scorer_module, "score_requests", lambda m, r, **k: (np.full(len(r), value), np.ones(len(r))))
    scorer = RewardScorer(model, tokenizer, task="qa")
    record = Record(query="q?", pos=["a"], neg=["b"], answers=["x"], task="qa", source="f.jsonl:7")
    with pytest.raises(DataError, match=r"^f\.jsonl:7: field 'teacher_scores': the LM gave a non-finite reward") as e:
        scorer.score([record])
    assert f"({float(value)}) for candidate 0;" in str(e.value)


class SpyTokenizer:
    """Wraps a tokenizer and records the longest text it was asked to encode."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.longest = 0

    def __call__(self, text, *args, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.inner(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_huge_field_is_cut_before_the_tokenizer_sees_it_and_scores_stay_equal(tokenizer, model):  # noqa: F811
    assert max_token_chars(tokenizer) == 81  # SmolLM2: "\n" + 80 spaces is its longest token
    budget = char_budget(tokenizer, 32)
    assert budget == (32 + 16) * 81
    words = " ".join(f"word{i}" for i in range(200_000))  # ~1.5 MB, far beyond 32 tokens
    spy = SpyTokenizer(tokenizer)
    record = Record(query="q?", pos=[words], neg=["short passage"], answers=["word3"], task="qa")
    scorer = RewardScorer(model, spy, task="qa", max_key_tokens=32, max_length=512)
    prepared = scorer.prepare(record)
    assert spy.longest <= budget + 100  # the cut key inside the filled template, never the 1.5 MB text
    assert record.pos == [words]  # the record itself (written out later) keeps its text
    # the same requests and scores as tokenising the whole text and keeping its first 32 tokens
    whole = scorer.builder("qa").build(record)
    assert prepared.requests == whole.requests
    plain = RewardScorer(model, tokenizer, task="qa", max_key_tokens=32, max_length=512)
    assert scorer.score([record]) == plain.score_prepared([whole])


def test_normal_records_are_not_copied_and_lrlm_keys_cut_alike(data_dir, tokenizer, model):  # noqa: F811
    from tests.test_reward import sample_records

    for task in ("qa", "lrlm"):
        scorer = RewardScorer(model, tokenizer, task=task, max_key_tokens=24)
        for record in sample_records(data_dir, task):
            if task == "qa":
                assert scorer.cut(record) is record  # nothing to cut: no copy, same requests by construction
            huge = Record(**{**record.__dict__, "pos": [record.candidates[0] * 2000]})
            assert scorer.prepare(huge).requests == scorer.builder(task).build(huge).requests


def test_over_long_query_is_refused_before_tokenising(tokenizer, model):  # noqa: F811
    spy = SpyTokenizer(tokenizer)
    scorer = RewardScorer(model, spy, task="qa", max_length=100)
    record = Record(query="x" * 8101, pos=["a"], answers=["b"], task="qa", source="in.jsonl:3")
    with pytest.raises(DataError) as e:
        scorer.prepare(record)
    assert str(e.value) == (
        "in.jsonl:3: field 'query': is 8,101 characters, more than the LM's context of 100 tokens can hold "
        "(at most 81 characters per token) (shorten it, or pass --skip-invalid to skip such records)"
    )
    assert spy.longest < 100
