"""IR metrics: pytrec_eval-backed values equal hand computations; tie and cutoff conventions; record adapters."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from llm_embedder.data.records import Record
from llm_embedder.errors import UserError
from llm_embedder.evaluation.metrics import (
    candidate_qrels,
    compute_metrics,
    corpus_qrels,
    parse_metric,
    per_query_metrics,
    record_query_ids,
    run_from_rankings,
    run_from_result,
)
from llm_embedder.retrieval.base import SearchResult

ALL = [
    "ndcg@3",
    "ndcg@10",
    "recall@2",
    "recall@10",
    "precision@3",
    "map@10",
    "mrr@1",
    "mrr@3",
    "mrr@10",
    "hit@1",
    "hit@3",
    "ndcg",
    "map",
    "mrr",
]


# ------------------------------------------------------------------ a direct implementation to cross-check against
def hand(ranking: list[str], rel: dict[str, int], name: str) -> float:
    """Textbook definitions (linear gain, log2 discount; AP over all relevant docs)."""
    m = parse_metric(name)
    k = m.cutoff or len(ranking)
    top = ranking[:k]
    relevant = {d for d, r in rel.items() if r > 0}
    if m.family == "ndcg":
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
        # without a cutoff the ideal ranking lists every relevant document, however short the run
        ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[: m.cutoff]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        return dcg / idcg
    if m.family == "recall":
        return len(relevant.intersection(top)) / len(relevant)
    if m.family == "precision":
        return len(relevant.intersection(top)) / k
    if m.family == "map":
        hits, total = 0, 0.0
        for i, d in enumerate(top):
            if d in relevant:
                hits += 1
                total += hits / (i + 1)
        return total / len(relevant)
    first = next((i for i, d in enumerate(top) if d in relevant), None)
    if m.family == "mrr":
        return 0.0 if first is None else 1.0 / (first + 1)
    return float(first is not None)  # hit


def test_tiny_case_by_hand():
    # ranking d1 (rel 1), d3 (rel 0), d2 (rel 2), d4 (unjudged)
    run = {"q1": {"d1": 0.9, "d3": 0.8, "d2": 0.7, "d4": 0.1}}
    qrels = {"q1": {"d1": 1, "d2": 2, "d3": 0}}
    got = compute_metrics(run, qrels, ALL)
    idcg = 2 + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx((1 + 2 / math.log2(4)) / idcg)
    assert got["ndcg@3"] == pytest.approx((1 + 2 / 2) / idcg)
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["precision@3"] == pytest.approx(2 / 3)
    assert got["map@10"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got["mrr@1"] == pytest.approx(1.0)
    assert got["hit@1"] == 1.0


def test_mrr_cutoff_truncates_the_run():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"q": {"c": 1}}
    got = compute_metrics(run, qrels, ["mrr@2", "mrr@3", "mrr", "hit@2", "hit@3"])
    assert got == pytest.approx({"mrr@2": 0.0, "mrr@3": 1 / 3, "mrr": 1 / 3, "hit@2": 0.0, "hit@3": 1.0})


def test_missing_queries_count_zero_and_unjudged_queries_are_skipped():
    run = {"q1": {"a": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    got = compute_metrics(run, qrels, ["ndcg@10", "mrr@10"])
    assert got == pytest.approx({"ndcg@10": 0.5, "mrr@10": 0.5})
    per = per_query_metrics(run, qrels, ["ndcg@10"])
    assert set(per) == {"q1", "q2"} and per["q2"]["ndcg@10"] == 0.0
    with pytest.raises(UserError):
        compute_metrics(run, {"q": {"x": 0}}, ["ndcg@10"])


def test_ties_are_broken_by_doc_id_ascending():
    # "b" is relevant; with equal scores "a" comes first under our convention, so MRR = 1/2 whatever trec_eval does
    run = {"q": {"b": 1.0, "a": 1.0}}
    assert compute_metrics(run, {"q": {"b": 1}}, ["mrr@10"])["mrr@10"] == pytest.approx(0.5)
    assert compute_metrics(run, {"q": {"a": 1}}, ["mrr@10"])["mrr@10"] == pytest.approx(1.0)


def test_random_runs_match_the_direct_implementation():
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(30)]
    run, qrels = {}, {}
    for q in range(40):
        qid = f"q{q}"
        ranked = rng.sample(docs, rng.randint(1, 25))
        # integer scores with many ties exercise the tie convention too
        run[qid] = {d: float(rng.randint(0, 5)) for d in ranked}
        judged = rng.sample(docs, rng.randint(1, 8))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if not any(qrels[qid].values()):
            qrels[qid][judged[0]] = 1
    per = per_query_metrics(run, qrels, ALL)
    for qid in qrels:
        ranking = [d for d, _ in sorted(run[qid].items(), key=lambda x: (-x[1], x[0]))]
        for name in ALL:
            assert per[qid][name] == pytest.approx(hand(ranking, qrels[qid], name), abs=1e-9), (qid, name)


def test_metric_names():
    assert parse_metric("NDCG@10").family == "ndcg" and parse_metric("P@5").family == "precision"
    assert parse_metric("mrr").cutoff is None
    for bad in ("foo@3", "recall", "ndcg@0", "ndcg@x"):
        with pytest.raises(UserError):
            parse_metric(bad)


def test_run_from_result_keeps_the_retriever_order_and_drops_padding():
    result = SearchResult(
        ids=np.array([[5, 2, -1], [7, 7, 1]]),
        scores=np.array([[0.5, 0.5, -np.inf], [0.9, 0.9, 0.1]], dtype=np.float32),
    )
    run = run_from_result(result, ["a", "b"], doc_ids=[f"doc{i}" for i in range(8)])
    assert list(run["a"]) == ["doc5", "doc2"] and run["a"]["doc5"] > run["a"]["doc2"]
    assert list(run["b"]) == ["doc7", "doc1"]
    # doc5 is first although "doc2" < "doc5": the retriever's order wins over the id tie-break
    assert compute_metrics(run, {"a": {"doc5": 1}}, ["mrr@10"])["mrr@10"] == 1.0
    with pytest.raises(UserError):
        run_from_result(result, ["only-one"])


def test_record_adapters():
    records = [
        Record(query="q", pos=["P"], neg=["N"], pos_index=[3], neg_index=[4], query_id=1),
        Record(query="q", pos=["key two"], neg=[], query_id=1),
        Record(query="q", history=["h0", "h1", "h2"], teacher_scores=[0.1, 0.7, 0.7]),
        Record(query="q", pos=["a"], neg=["b", "c"]),
        Record(query="q", history=["h0"]),
    ]
    ids = record_query_ids(records)
    assert ids == ["1", "1#1", "2", "3", "4"]
    assert corpus_qrels(records[:2], ids[:2], corpus_keys=["x", "key two", "y", "P"]) == {
        "1": {"3": 1},
        "1#1": {"1": 1},
    }
    assert candidate_qrels(records[2:], ids[2:]) == {"2": {"1": 1}, "3": {"0": 1}}
    run = run_from_rankings([[2, 1, 0], [1, 2, 0]], ["2", "3"])
    got = compute_metrics(run, candidate_qrels(records[2:4], ids[2:4]), ["ndcg@1", "mrr@5"])
    assert got == pytest.approx({"ndcg@1": 0.0, "mrr@5": (1 / 2 + 1 / 3) / 2})
