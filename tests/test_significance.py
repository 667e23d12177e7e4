"""Paired significance of retriever differences: against direct computations, degenerate cases, and in a real eval."""

from __future__ import annotations

import doctest
import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest

from llm_embedder.cli.main import main
from llm_embedder.evaluation import significance
from llm_embedder.evaluation.report import render_paired
from llm_embedder.evaluation.significance import PairedDifference, compare_to_baselines, paired_difference


def exact_sign_flip_p(d: np.ndarray) -> float:
    """All 2**n sign patterns: the share whose |mean| reaches the observed |mean| (Fisher's randomization test)."""
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=len(d))))
    means = (signs * d).mean(axis=1)
    return float(np.mean(np.abs(means) >= abs(d.mean()) - 1e-12))


def exact_sign_flip_p_integers(d: list[int]) -> float:
    """The same test for integer differences, by convolving the null distribution of the sum (any n)."""
    null = Counter({0: 1})
    for x in d:
        step: Counter[int] = Counter()
        for total, count in null.items():
            step[total + x] += count
            step[total - x] += count
        null = step
    observed = abs(sum(d))
    return sum(c for total, c in null.items() if abs(total) >= observed) / sum(null.values())


@pytest.mark.parametrize("seed", range(5))
def test_p_value_is_the_exact_sign_flip_test_for_small_sets(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 8) / 4  # nDCG-like values with ties, as on a small dev set
    b = rng.integers(0, 5, 8) / 4
    result = paired_difference(a, b, seed=123)
    assert result.n == 8 and result.diff == pytest.approx(float(np.mean(a - b)))
    assert result.p == pytest.approx(exact_sign_flip_p(a - b), abs=1e-12)
    # exact: the seed does not matter
    assert paired_difference(a, b, seed=7).p == result.p


def test_p_value_of_a_larger_set_approximates_the_exact_test():
    """Beyond 16 queries the sign patterns are sampled (10,000): within a few standard errors of the exact p."""
    for seed in range(5):
        d = np.random.default_rng(seed).integers(-2, 4, 30)
        result = paired_difference(d / 4 + 0.5, np.full(30, 0.5), seed=0)
        assert result.p == pytest.approx(exact_sign_flip_p_integers(list(d)), abs=0.03), seed
        assert result.p >= 1 / 10_001  # a sampled test never claims p = 0


def test_interval_matches_normal_theory_on_a_large_sample():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.2, 200)
    b = a - rng.normal(0.02, 0.1, 200)
    result = paired_difference(a, b, seed=0)
    d = a - b
    half = 1.96 * d.std() / np.sqrt(len(d))
    assert result.ci_low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert result.ci_high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert result.ci_low < result.diff < result.ci_high


def test_seeded_and_reproducible():
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    assert paired_difference(a, b, seed=5) == paired_difference(a, b, seed=5)
    assert paired_difference(a, b, seed=5).ci_low != paired_difference(a, b, seed=6).ci_low


def test_degenerate_cases():
    values = [0.3, 0.5, 0.0, 1.0]
    assert paired_difference(values, values) == PairedDifference(0.0, 0.0, 0.0, 1.0, 4)  # a retriever with itself
    assert paired_difference([1.0], [0.0]) == PairedDifference(1.0, None, None, None, 1)  # one query: no test
    assert paired_difference([], []) == PairedDifference(None, None, None, None, 0)
    # the same gain on every query: the interval is that gain; 5 of 5 wins is p = 2/32
    assert paired_difference([1.0] * 5, [0.0] * 5) == PairedDifference(1.0, 1.0, 1.0, 0.0625, 5)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 0.0], [1.0])


def test_docstring_example_runs():
    assert doctest.testmod(significance, verbose=False).failed == 0


def test_compare_to_baselines_pairs_each_retriever_once_on_shared_queries():
    values = {
        "bm25": {"q1": 0.0, "q2": 1.0, "q3": 0.5, "q4": 0.2},
        "base": {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 0.2},
        "twin": {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 0.2},
        "full": {"q2": 0.0, "q3": 1.0, "q4": 1.0},  # q1 not judged for it
    }
    paired = compare_to_baselines(values, ["bm25", "base", "absent"], seed=0)
    assert {name: list(against) for name, against in paired.items()} == {
        "base": ["bm25"],  # two baselines: compared once, the later against the earlier
        "twin": ["bm25", "base"],
        "full": ["bm25", "base"],
    }
    assert paired["twin"]["base"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0, "n": 4}
    assert paired["full"]["bm25"]["n"] == 3
    assert paired["full"]["bm25"] == paired_difference([0.0, 1.0, 1.0], [1.0, 0.5, 0.2], seed=0).to_json()
    # a pair's numbers do not depend on the other retrievers of the run
    alone = compare_to_baselines({"bm25": values["bm25"], "full": values["full"]}, ["bm25"], seed=0)
    assert alone["full"]["bm25"] == paired["full"]["bm25"]


def test_render_paired_lines():
    results = {
        "main_metric": "exact_match",
        "paired_metric": "ndcg@10",
        "paired": {
            "full": {
                "bm25": {"diff": 0.1042, "ci_low": 0.061, "ci_high": 0.148, "p": 0.0002, "n": 100},
                "base": {"diff": 0.012, "ci_low": -0.008, "ci_high": 0.031, "p": 0.2417, "n": 100},
            },
            "tiny": {"base": {"diff": 1.0, "ci_low": None, "ci_high": None, "p": None, "n": 1}},
        },
    }
    assert render_paired(results) == [
        "",
        "paired differences (ndcg@10, the main retrieval metric): retriever minus baseline on the queries with a value "
        "for both, mean [95% bootstrap CI], two-sided randomization test p; * = p < 0.05",
        "",
        "- full vs bm25: +0.104 [+0.061, +0.148], p < 0.001 (n = 100) *",
        "- full vs base: +0.012 [-0.008, +0.031], p = 0.242 (n = 100)",
        "- tiny vs base: no test (n = 1 paired query)",
    ]
    assert render_paired({**results, "paired": {}}) == []


# ------------------------------------------------------------------------------------------------ in a real eval
def test_eval_writes_per_query_values_and_paired_differences(data_dir, tmp_path, capsys):
    """The 8 toy tool records, ranked among their candidates: per-query values that average to the table, pairs that
    recompute from them (exact tests: 8 queries), and the section below the unchanged table."""
    toy = str(data_dir / "toy" / "tool.jsonl")
    out = tmp_path / "report"
    retrievers = ["-r", "bm25", "-r", "base=default", "-r", "lucky=random", "-r", "none"]
    assert main(["eval", "--task", "tool", "--data", toy, *retrievers, "--quiet", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "tool.json").read_text())
    assert results["main_metric"] == results["paired_metric"] == "ndcg@5"
    assert results["baselines"] == ["bm25", "base"]
    per_query = results["per_query"]
    assert list(per_query) == ["bm25", "base", "lucky"]  # none retrieves nothing: no values
    for name, metrics in per_query.items():
        assert list(metrics) == ["ndcg@5", "recall@5", "mrr@5"]
        for metric, values in metrics.items():
            assert len(values) == 8
            assert sum(values.values()) / 8 == pytest.approx(results["results"][name][metric], abs=1e-12)
    paired = results["paired"]
    assert {name: list(against) for name, against in paired.items()} == {"base": ["bm25"], "lucky": ["bm25", "base"]}
    for name, against in paired.items():
        for baseline, entry in against.items():
            mine, theirs = per_query[name]["ndcg@5"], per_query[baseline]["ndcg@5"]
            assert entry == paired_difference([mine[q] for q in theirs], list(theirs.values()), seed=0).to_json()
            d = np.array([mine[q] - theirs[q] for q in theirs])
            assert entry["p"] == pytest.approx(exact_sign_flip_p(d), abs=1e-12)

    markdown = (out / "tool.md").read_text()
    table, section = markdown.split("\n\npaired differences")
    assert "| retriever | ndcg@5 ↑ | recall@5 ↑ | mrr@5 ↑ |\n|---|---:|---:|---:|\n| bm25 |" in table
    assert section.startswith(" (main metric ndcg@5): retriever minus baseline")
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0] for line in lines] == ["- base vs bm25", "- lucky vs bm25", "- lucky vs base"]
    entry = paired["base"]["bm25"]
    assert lines[0].startswith(
        f"- base vs bm25: {entry['diff']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
    )
    assert all(
        re.fullmatch(
            r"- \w+ vs \w+: [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], p [=<] [\d.]+ \(n = 8\)( \*)?", line
        )
        for line in lines
    )
    assert markdown in printed  # the CLI prints the same report

    # --baseline: compare with the chosen retriever only
    argv = ["eval", "--task", "tool", "--data", toy, *retrievers, "--baseline", "lucky", "--quiet", "-o", str(out)]
    assert main(argv) == 0
    chosen = json.loads((out / "tool.json").read_text())
    assert chosen["baselines"] == ["lucky"]
    assert {name: list(against) for name, against in chosen["paired"].items()} == {"bm25": ["lucky"], "base": ["lucky"]}
