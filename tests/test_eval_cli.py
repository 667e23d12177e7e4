"""``llm-embedder eval``: report files, one-line errors, and tasks the project has never seen.

A tiny random Llama (SmolLM2 tokenizer) stands in for the LLM except in one small real-LM check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_embedder.cli.main import main
from llm_embedder.tasks.registry import TASKS


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama + the bundled SmolLM2 tokenizer, saved as an LM folder for ``--lm``."""
    from lm_helpers import make_tiny_lm

    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_lm(folder)
    return folder


@pytest.fixture
def isolated_tasks(monkeypatch):
    """Tasks registered by ``--tasks`` during a test vanish afterwards (TASKS is process-wide)."""
    monkeypatch.setattr(TASKS, "_specs", dict(TASKS._specs))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat_eval(data_dir: Path, *extra: str) -> int:
    """``llm-embedder eval`` on chat dev with the none and recency baselines, quiet, plus ``extra`` options."""
    dev = str(data_dir / "tasks/chat/dev.jsonl")
    return main(["eval", "--task", "chat", "--data", dev, "-r", "none", "-r", "recency", "--quiet", *extra])


def test_eval_writes_table_json_and_png(data_dir, tiny_lm_dir, tmp_path, capsys):
    out = tmp_path / "report"
    lm = ["--lm", str(tiny_lm_dir)]
    rc = _chat_eval(data_dir, "-r", "lucky=random", *lm, "--limit", "3", "--baseline", "none", "-o", str(out))
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| retriever | perplexity ↓ |" in printed
    for name in ("none", "recency", "lucky"):
        assert f"| {name} |" in printed
    results = json.loads((out / "chat.json").read_text())
    assert results["retrievers"] == ["none", "recency", "lucky"] and results["n_records"] == 3
    assert all(math.isfinite(results["results"][n]["perplexity"]) for n in results["retrievers"])
    assert (out / "chat.md").read_text().startswith("task `chat`")
    assert (out / "chat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # pooled perplexity is compared record by record through its logarithm (the same targets for every retriever)
    assert results["paired_metric"] == "log_perplexity" and set(results["per_query"]) == {"none", "recency", "lucky"}
    for name in results["retrievers"]:
        values = results["per_query"][name]["log_perplexity"]
        assert sum(values.values()) / len(values) == pytest.approx(math.log(results["results"][name]["perplexity"]))
    report = (out / "chat.md").read_text()
    assert "paired differences (log_perplexity, the LLM's metric per record; lower is better)" in report
    assert "- recency vs none: " in report and "- lucky vs none: " in report  # the LLM alone as the baseline


def test_eval_takes_every_lm_precision_that_score_takes(data_dir, tiny_lm_dir, tmp_path):
    """``--lm-dtype bf16-mixed`` (bf16 products, the scoring default on CPUs with bf16 instructions) runs the
    downstream metric in that precision: close to fp32's figure, not equal to it."""
    perplexity = {}
    for dtype in ("fp32", "bf16-mixed"):
        out = tmp_path / dtype
        argv = ("--lm", str(tiny_lm_dir), "--lm-dtype", dtype, "--limit", "3", "--baseline", "none", "-o", str(out))
        assert _chat_eval(data_dir, *argv) == 0
        perplexity[dtype] = json.loads((out / "chat.json").read_text())["results"]["recency"]["perplexity"]
    assert perplexity["bf16-mixed"] != perplexity["fp32"]
    assert perplexity["bf16-mixed"] == pytest.approx(perplexity["fp32"], rel=0.02)


def _bad_record_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"query": "hi", "history": ["Speaker 1: a\nSpeaker 2: b"], "answers": ["ok"]},
            {"query": "no answer here", "history": ["Speaker 1: a\nSpeaker 2: b"]},
        ],
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_data", "file not found"),
        ("unknown_task", "unknown task 'nope'"),
        ("record_without_answers", "bad.jsonl:2: field 'answers'"),
        ("malformed_json", "broken.jsonl:2: malformed JSON"),
        ("recency_on_corpus", "retriever 'recency' ranks a record's own candidates"),
        ("missing_encoder", "encoder folder ./no/such/encoder not found"),
        ("duplicate_retriever", "retriever 'bm25' given twice"),
        ("bad_limit", "--limit must be at least 1"),
        ("bad_downstream_limit", "--downstream-limit must be at least 1"),
        ("missing_lm", "LM folder ./no/such/lm not found"),
        ("bad_task_file", "unknown downstream scenario 'poetry'"),
        ("unknown_baseline", "unknown baseline 'bm2' (choose one of the evaluated retrievers: bm25, none)"),
        ("blind_baseline", "baseline 'none' retrieves nothing, so it has no per-query retrieval metrics"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, expected, data_dir, tiny_lm_dir, tmp_path, capsys, isolated_tasks):
    chat = str(data_dir / "tasks/chat/dev.jsonl")
    qa = str(data_dir / "tasks/qa/dev.jsonl")
    lm = ["--lm", str(tiny_lm_dir)]
    argv = {
        "missing_data": ["--task", "chat", "--data", str(tmp_path / "none.jsonl"), "-r", "none", *lm],
        "unknown_task": ["--task", "nope", "--data", chat, "-r", "none"],
        "record_without_answers": ["--task", "chat", "--data", str(_bad_record_file(tmp_path)), "-r", "none", *lm],
        "malformed_json": [
            "--task",
            "chat",
            "--data",
            str(_write_text(tmp_path / "broken.jsonl", '{"query": "a", "answers": ["b"]}\n{oops\n')),
            "-r",
            "none",
            *lm,
        ],
        "recency_on_corpus": [
            "--task",
            "qa",
            "--data",
            qa,
            "--corpus",
            str(data_dir / "tasks/qa/corpus.jsonl"),
            "-r",
            "recency",
            "--limit",
            "2",
            *lm,
        ],
        "missing_encoder": ["--task", "chat", "--data", chat, "-r", "./no/such/encoder", *lm],
        "duplicate_retriever": ["--task", "chat", "--data", chat, "-r", "bm25", "-r", "bm25", *lm],
        "unknown_baseline": ["--task", "chat", "--data", chat, "-r", "bm25", "-r", "none", "--baseline", "bm2", *lm],
        "blind_baseline": [
            "--task",
            "chat",
            "--data",
            chat,
            "-r",
            "bm25",
            "-r",
            "none",
            "--baseline",
            "none",
            "--no-downstream",
        ],  # fmt: skip
        "bad_limit": ["--task", "chat", "--data", chat, "-r", "none", "--limit", "0", *lm],
        "bad_downstream_limit": ["--task", "chat", "--data", chat, "-r", "none", "--downstream-limit", "0", *lm],
        "missing_lm": ["--task", "chat", "--data", chat, "-r", "none", "--lm", "./no/such/lm", "--limit", "2"],
        "bad_task_file": [
            "--task",
            "poem",
            "--data",
            chat,
            "-r",
            "none",
            "--tasks",
            str(
                _write_text(
                    tmp_path / "t.yaml",
                    "poem:\n  query_instruction: 'q: '\n"
                    "  key_instruction: 'k: '\n  evaluation:\n    downstream: poetry\n",
                )
            ),
            "--limit",
            "2",
            *lm,
        ],
    }[case]
    rc = main(["eval", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("llm-embedder eval: error: "), err
    assert expected in err
    assert "Traceback" not in err


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


UNSEEN_TASKS = """
recipes:
  description: cooking know-how for a kitchen assistant
  query_instruction: "Find the recipe note for: "
  key_instruction: "Recipe note: "
  key_template: "{name}: {body}"
  evaluation:
    metrics: ["ndcg@2", "recall@2"]
    main_metric: ndcg@2
    downstream: qa
    top_k: 1
gadgets:
  query_instruction: "Which gadget helps with: "
  key_instruction: "Gadget: "
  evaluation:
    metrics: ["ndcg@2", "mrr@2"]
    main_metric: ndcg@2
    downstream: retrieval
    top_k: 2
"""


def test_unseen_tasks_from_a_task_file(tiny_lm_dir, tmp_path, capsys, isolated_tasks):
    tasks = _write_text(tmp_path / "my_tasks.yaml", UNSEEN_TASKS)
    corpus = write_jsonl(
        tmp_path / "notes.jsonl",
        [
            {"name": "pancakes", "body": "whisk flour, eggs and milk; fry thin rounds in butter"},
            {"name": "risotto", "body": "toast arborio rice, add stock ladle by ladle, finish with parmesan"},
            {"name": "brownies", "body": "melt chocolate and butter, fold in sugar, eggs and flour, bake 25 minutes"},
            {"name": "pesto", "body": "pound basil, pine nuts, garlic and parmesan with olive oil"},
        ],
    )
    records = write_jsonl(
        tmp_path / "questions.jsonl",
        [
            {
                "query": "how do I make pesto with basil",
                "pos": [],
                "neg": [],
                "pos_index": [3],
                "answers": ["pound basil"],
            },
            {
                "query": "rice dish with stock and parmesan",
                "pos": [],
                "neg": [],
                "pos_index": [1],
                "answers": ["risotto", "a risotto"],
            },
            {
                "query": "chocolate dessert baked 25 minutes",
                "pos": [],
                "neg": [],
                "pos_index": [2],
                "answers": ["brownies"],
            },
        ],
    )
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--tasks",
            str(tasks),
            "--task",
            "recipes",
            "--data",
            str(records),
            "--corpus",
            str(corpus),
            "-r",
            "none",
            "-r",
            "bm25",
            "-r",
            "random",
            "--lm",
            str(tiny_lm_dir),
            "-o",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = json.loads((out / "recipes.json").read_text())
    assert results["downstream"] == "qa" and results["top_k"] == 1 and results["pool"] == "corpus"
    assert results["metrics"] == ["contains_answer", "exact_match", "answer_logprob", "ndcg@2", "recall@2"]
    assert results["results"]["bm25"]["recall@2"] == pytest.approx(1.0)  # the words overlap: BM25 finds them
    assert "ndcg@2" not in results["results"]["none"]
    assert math.isfinite(results["results"]["none"]["answer_logprob"])
    # qa's LLM metrics are means over records: the pairs compare the LLM's own main metric, record by record, and
    # the LLM alone ("none") has values too
    assert results["main_metric"] == results["paired_metric"] == "contains_answer"
    assert {name: list(against) for name, against in results["paired"].items()} == {
        "none": ["bm25"],
        "random": ["bm25"],
    }
    for name in ("none", "bm25", "random"):
        values = results["per_query"][name]
        assert set(values["contains_answer"]) == set(results["per_query"]["bm25"]["ndcg@2"])  # the same query ids
        for metric in ("contains_answer", "exact_match", "answer_logprob"):
            assert sum(values[metric].values()) / len(values[metric]) == pytest.approx(results["results"][name][metric])
    assert "paired differences (main metric contains_answer)" in (out / "recipes.md").read_text()
    # "does retrieval help the LLM at all?": the LLM alone as the baseline, on the LLM's metric
    argv = ["eval", "--tasks", str(tasks), "--task", "recipes", "--data", str(records), "--corpus", str(corpus)]
    argv += ["-r", "none", "-r", "bm25", "--baseline", "none", "--lm", str(tiny_lm_dir), "-o", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "recipes.json").read_text())
    assert results["baselines"] == ["none"] and list(results["paired"]) == ["bm25"]
    assert results["paired"]["bm25"]["none"]["n"] == 3

    # a retrieval-only unseen task against each record's own candidates (no corpus, no LLM needed)
    gadgets = write_jsonl(
        tmp_path / "gadgets.jsonl",
        [
            {
                "query": "keep coffee hot for hours",
                "pos": ["a vacuum flask keeps drinks hot"],
                "neg": ["a kite flies in the wind", "a hammer drives nails"],
            },
            {
                "query": "drive nails into wood",
                "pos": ["a hammer drives nails"],
                "neg": ["a vacuum flask keeps drinks hot", "a kite flies in the wind"],
            },
        ],
    )
    rc = main(
        [
            "eval",
            "--tasks",
            str(tasks),
            "--task",
            "gadgets",
            "--data",
            str(gadgets),
            "-r",
            "bm25",
            "-r",
            "none",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| retriever | ndcg@2 ↑ | mrr@2 ↑ |" in printed
    assert "| bm25 | **1.0000** | **1.0000** |" in printed
    assert "| none | - | - |" in printed


def test_eval_with_the_bundled_lm(data_dir, tmp_path, capsys):
    """The real SmolLM2 on 2 chat records: the numbers are perplexities of a real LM (finite, modest)."""
    rc = _chat_eval(data_dir, "--limit", "2", "--max-prompt-tokens", "256", "-o", str(tmp_path))
    assert rc == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "chat.json").read_text())
    assert results["lm"] == "smollm2"
    for name in ("none", "recency"):
        assert 1.0 < results["results"][name]["perplexity"] < 500.0


def test_downstream_limit_gives_the_llm_the_first_records(data_dir, tiny_lm_dir):
    """downstream_limit=N: the LLM sees the first N records (same numbers as limit=N), retrieval uses them all."""
    from llm_embedder.evaluation.runner import evaluate

    dev = data_dir / "tasks/chat/dev.jsonl"
    kwargs = {"lm": str(tiny_lm_dir), "show_progress": False}
    part = evaluate("chat", dev, ["recency"], limit=4, downstream_limit=2, **kwargs)
    small = evaluate("chat", dev, ["recency"], limit=2, **kwargs)
    assert part["n_records"] == 4 and part["n_downstream_records"] == 2
    from llm_embedder.evaluation.report import render_markdown

    assert "(LLM metrics on the first 2 records)" in render_markdown(part)
    assert "LLM metrics on the first" not in render_markdown(small)
    assert part["results"]["recency"]["perplexity"] == pytest.approx(small["results"]["recency"]["perplexity"])


# ---------------------------------------------------------------------------------------------- drills (issue 11)
_CORPUS = [{"title": "", "text": t} for t in ("Paris is the capital of France.", "Cats purr.", "Rome is in Italy.")]


def test_pos_index_outside_the_corpus_is_one_line(tmp_path, capsys):
    """Drill: a ``pos_index`` row the corpus does not have counted as a miss, silently lowering every metric."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", _CORPUS)
    data = write_jsonl(
        tmp_path / "dev.jsonl",
        [{"query": "capital of France", "pos_index": [0]}, {"query": "capital of Italy", "pos_index": [3]}],
    )
    args = ["eval", "--task", "qa", "--data", str(data), "--corpus", str(corpus), "-r", "bm25", "--no-downstream"]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"llm-embedder eval: error: {data}:2: field 'pos_index': row 3 is outside the corpus (3 rows, numbered "
        "from 0) (give the corpus these records were made for, or fix their pos_index)"
    )


def test_qa_on_a_retrieval_only_set_reports_retrieval_metrics(tmp_path, capsys):
    """A BEIR-style set (no ``answers``) with the qa task: the retrieval metrics, and a word that the LLM part was
    skipped - not a refusal. No LLM is loaded (``--lm`` names a folder that does not exist)."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", _CORPUS)
    data = write_jsonl(
        tmp_path / "dev.jsonl",
        [{"query": "capital of France", "pos_index": [0]}, {"query": "capital of Italy", "pos_index": [2]}],
    )
    out = tmp_path / "report"
    args = ["eval", "--task", "qa", "--data", str(data), "--corpus", str(corpus), "-r", "bm25", "--quiet"]
    assert main([*args, "--lm", str(tmp_path / "no-such-lm"), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[eval qa] no record has 'answers' (a retrieval-only set): the qa LLM metrics were skipped" in captured.err
    report = json.loads((out / "qa.json").read_text())
    assert report["downstream"] is None and report["lm"] is None
    assert report["downstream_skipped"].endswith("the qa LLM metrics were skipped")
    assert report["results"]["bm25"]["ndcg@10"] == pytest.approx(1.0)
    # a set where only some records have answers is still an error: that is a broken file, not a retrieval-only set
    write_jsonl(data, [{"query": "capital of France", "pos_index": [0], "answers": ["Paris"]}, {"query": "x"}])
    assert main([*args, "--lm", str(tmp_path / "no-such-lm")]) == 2
    assert "dev.jsonl:2: field 'answers': missing or empty" in capsys.readouterr().err
