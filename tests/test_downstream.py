"""Downstream (LLM) evaluation per scenario: prompt building, metrics, retrievers, the evaluate() API.

The LLM here is a tiny randomly initialised Llama with the SmolLM2 tokenizer: its numbers mean nothing, but every
code path (prompt fitting, batching, generation, metric pooling) runs exactly as with a real LM, in seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import Record, load_records
from llm_embedder.errors import UserError
from llm_embedder.evaluation.downstream.base import DownstreamSettings, LanguageModel, RetrievedKey
from llm_embedder.evaluation.downstream.chat import ChatEvaluator
from llm_embedder.evaluation.downstream.icl import ICLEvaluator
from llm_embedder.evaluation.downstream.lrlm import LRLMEvaluator
from llm_embedder.evaluation.downstream.perplexity import token_weighted_perplexity
from llm_embedder.evaluation.downstream.qa import contains_answer, exact_match, normalize_answer
from llm_embedder.evaluation.downstream.registry import DOWNSTREAM, get_downstream
from llm_embedder.evaluation.retrieve import retrieve
from llm_embedder.evaluation.retrievers import (
    HybridRetrieval,
    NoRetrieval,
    RandomRetrieval,
    RecencyRetrieval,
    build_retriever,
    parse_retriever_spec,
)
from llm_embedder.evaluation.runner import evaluate, retrieval_depth, select_records
from llm_embedder.prompts import TokenBudget, fit_keys, render_prompt
from llm_embedder.prompts.render import SLACK_TOKENS
from llm_embedder.tasks.registry import TASKS


@pytest.fixture(scope="module")
def tiny_lm() -> LanguageModel:
    from lm_helpers import make_tiny_lm

    return make_tiny_lm()


def quiet(**kwargs) -> DownstreamSettings:
    return DownstreamSettings(show_progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------ pure helpers


def test_token_weighted_perplexity_pools_tokens_not_samples():
    # sample 1: 1 token, log p = -1; sample 2: 3 tokens, total log p = -6
    pooled = token_weighted_perplexity([-1.0, -6.0], [1, 3])
    assert pooled == pytest.approx(math.exp(7 / 4))
    per_sample_mean = (math.exp(1.0) + math.exp(2.0)) / 2  # what the reference reports
    assert pooled != pytest.approx(per_sample_mean)
    assert math.isnan(token_weighted_perplexity([], []))


def test_squad_normalisation_and_matching():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Beatles.", ["Beatles"])
    assert not exact_match("the Beatles were great", ["Beatles"])
    assert contains_answer("I think it was the Beatles, in 1964", ["beatles"])
    assert not contains_answer("Beatlesque", ["Beatles"])  # whole words only
    assert not contains_answer("anything", ["  ", "!"])  # empty answers never match


def token_lengths(tokenizer, texts):
    return TokenBudget(tokenizer).lengths(texts)


def test_fit_keys_drops_least_relevant_first_and_truncates_only_when_allowed(tiny_lm):
    budget = TokenBudget(tiny_lm.tokenizer)
    keys = ["alpha beta gamma " * 5, "delta epsilon " * 40, "zeta"]
    lengths = budget.lengths(keys)
    room = lengths[0] + 1 + 20  # key 0, a separator and 20 more tokens
    whole = fit_keys(budget, keys, room=room, separator_tokens=1, truncate=None)
    assert [i for i, _ in whole] == [0]  # key 1 does not fit, so key 2 (less relevant) is dropped too
    cut = fit_keys(budget, keys, room=room, separator_tokens=1, truncate="start", min_truncated_tokens=8)
    assert [i for i, _ in cut] == [0, 1]
    assert budget.length(cut[1][1]) == 20
    assert cut[1][1].startswith("delta")
    end = fit_keys(budget, keys, room=room, separator_tokens=1, truncate="end", min_truncated_tokens=8)
    assert end[1][1].endswith("epsilon ") and budget.length(end[1][1]) == 20


def icl_prompt(tok, demos, query, budget):
    prompt = render_prompt(TASKS.get("icl"), query, demos, tokenizer=tok, max_tokens=budget)
    return prompt.context, list(prompt.kept)


def test_icl_overflow_keeps_most_relevant_demos_nearest_the_query(tiny_lm):
    tok = tiny_lm.tokenizer
    demos = [f"Review: demo number {i} " + "word " * (5 + 3 * i) + f"\nLabel{i}" for i in range(5)]
    query = "Review: the query text\nIs it Positive or Negative?"
    lengths = token_lengths(tok, [d.strip() for d in demos])
    sep = token_lengths(tok, ["\n"])[0]
    fixed = token_lengths(tok, ["\n" + query + "\n"])[0]
    # room for exactly the two most relevant demos
    budget = fixed + SLACK_TOKENS + lengths[0] + lengths[1] + sep + 2
    prompt, kept = icl_prompt(tok, demos, query, budget)
    assert kept == [1, 0]  # prompt order: the most relevant demo sits right before the query
    assert prompt == demos[1] + "\n" + demos[0] + "\n" + query + "\n"  # the reference's "\n" separator
    # a roomy budget keeps everything, least relevant first
    prompt, kept = icl_prompt(tok, demos, query, 4096)
    assert kept == [4, 3, 2, 1, 0]
    # too small for any demo: just the query, the label is never cut
    prompt, kept = icl_prompt(tok, demos, query, fixed + 1)
    assert kept == [] and prompt == query + "\n"


# ------------------------------------------------------------------------------------------------ retrievers


def test_retriever_specs_and_baseline_rankings():
    assert parse_retriever_spec("mine=./runs/model") == ("mine", "./runs/model")
    assert parse_retriever_spec("bm25") == ("bm25", "bm25")
    with pytest.raises(UserError):
        parse_retriever_spec("  ")
    cands = [["a", "b", "c"], [], ["x"]]
    assert RecencyRetrieval("recency").rank_candidates(["q"] * 3, cands, task="chat") == [[2, 1, 0], [], [0]]
    random_a = RandomRetrieval(seed=3).rank_candidates(["q"] * 3, cands, task="chat")
    assert random_a == RandomRetrieval(seed=3).rank_candidates(["q"] * 3, cands, task="chat")
    assert sorted(random_a[0]) == [0, 1, 2]
    result = RandomRetrieval(seed=1).search_corpus(["q1", "q2"], ["k"] * 5, 3, task="qa")
    assert result.ids.shape == (2, 3) and len(set(result.ids[0].tolist())) == 3
    with pytest.raises(UserError, match="recency"):
        RecencyRetrieval("recency").search_corpus(["q"], ["k"], 1, task="qa")
    with pytest.raises(UserError, match="not found"):
        build_retriever("./no/such/encoder")


def test_hybrid_fuses_rankings_by_reciprocal_rank():
    class Fixed(RandomRetrieval):
        def __init__(self, order):
            super().__init__("fixed")
            self.order = order

        def rank_candidates(self, queries, candidates, *, task):
            return [list(self.order) for _ in queries]

    hybrid = HybridRetrieval("hybrid", [Fixed([0, 1, 2]), Fixed([1, 2, 0])])
    # candidate 1: ranks 2 and 1 -> the best fused score; candidate 0: 1 and 3; candidate 2: 3 and 2
    assert hybrid.rank_candidates(["q"], [["a", "b", "c"]], task="qa") == [[1, 0, 2]]


def test_dense_candidate_ranking_prefers_the_matching_turn(embedder):
    retriever = build_retriever("default", load_embedder=lambda name: embedder)
    history = [
        "Speaker 1: I adopted a puppy.\nSpeaker 2: What breed is your dog?",
        "Speaker 1: I work as a nurse.\nSpeaker 2: Night shifts must be hard.",
    ]
    ranking = retriever.rank_candidates(["How is your hospital job going?"], [history], task="chat")
    assert ranking == [[1, 0]]


def test_retrieve_ranks_candidates_and_corpus_with_qrels():
    records = [
        Record(query="q", pos=["p"], neg=["n1", "n2"], query_id=1),
        Record(query="q", history=["t0", "t1", "t2"], teacher_scores=[0.1, 0.7, 0.2], query_id=2),
        Record(query="q", history=["t0"], query_id=3),
    ]
    outcome = retrieve(records, RecencyRetrieval("recency"), task="chat")
    assert outcome.qrels == {"1": {"0": 1}, "2": {"1": 1}}  # record 3: no positives, no teacher scores
    assert [k.position for k in outcome.keys[1]] == [2, 1, 0]
    assert [k.text for k in outcome.keys[1]] == ["t2", "t1", "t0"]
    ranked = sorted(outcome.run["2"], key=outcome.run["2"].get, reverse=True)
    assert ranked == ["2", "1", "0"]
    corpus = Corpus.from_texts(["n1", "p", "other"])
    by_corpus = retrieve(records[:1], RandomRetrieval(seed=0), task="qa", corpus=corpus, depth=2)
    assert by_corpus.pool == "corpus" and by_corpus.qrels == {"1": {"1": 1}}  # found by text: no pos_index
    assert len(by_corpus.keys[0]) == 2 and all(k.text == corpus[k.position] for k in by_corpus.keys[0])
    nothing = retrieve(records, NoRetrieval("none"), task="chat")
    assert nothing.keys == [[], [], []] and nothing.run == {}


def test_runner_helpers():
    records = [Record(query=str(i)) for i in range(10)]
    assert [r.query for r in select_records(records, 3)] == ["0", "1", "2"]
    chosen = select_records(records, 4, sample="random", seed=7)
    assert chosen == select_records(records, 4, sample="random", seed=7)
    assert [int(r.query) for r in chosen] == sorted(int(r.query) for r in chosen)
    assert retrieval_depth(["ndcg@3", "recall@20"], 5) == 20
    with pytest.raises(UserError):
        select_records(records, 0)


def test_every_builtin_task_names_a_registered_scenario():
    for spec in TASKS.specs():
        assert get_downstream(spec.evaluation.downstream) is DOWNSTREAM[spec.evaluation.downstream]
    with pytest.raises(UserError, match="unknown downstream"):
        get_downstream("nope")


# ------------------------------------------------------------------------------------------------ scenario evaluators


def _manual_sum_logprob(lm: LanguageModel, context: str, target: str) -> tuple[float, int]:
    """Sum of target-token log-probs from one plain forward pass (independent of the batched scorer)."""
    ctx = lm.tokenizer(context, add_special_tokens=False)["input_ids"]
    tgt = lm.tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(float(logprobs[len(ctx) + j - 1, t]) for j, t in enumerate(tgt))
    return total, len(tgt)


def test_chat_perplexity_equals_hand_computation(tiny_lm):
    records = [
        Record(
            query="Do you like dogs?",
            history=["Speaker 1: I have a cat.\nSpeaker 2: Cats are nice."],
            answers=["Yes, very much."],
        ),
        Record(
            query="Where do you live?",
            history=["Speaker 1: hi\nSpeaker 2: hello"],
            answers=["In a small town near the sea, with my two brothers and a very old dog."],
        ),
    ]
    evaluator = ChatEvaluator(TASKS.get("chat"), quiet())
    retrieved = [[RetrievedKey(r.history[0], 0)] for r in records]
    got = evaluator.evaluate(records, retrieved, tiny_lm)["perplexity"]
    parts = [
        _manual_sum_logprob(tiny_lm, f"{r.history[0]}\nSpeaker 1: {r.query}\nSpeaker 2:", " " + r.answers[0])
        for r in records
    ]
    expected = math.exp(-sum(lp for lp, _ in parts) / sum(n for _, n in parts))
    assert got == pytest.approx(expected, rel=1e-4)
    per_sample = float(np.mean([math.exp(-lp / n) for lp, n in parts]))
    assert got != pytest.approx(per_sample, rel=1e-4)
    # per record, for the paired comparisons: each record's NLL sum x records / all tokens, averaging to log(ppl)
    shares = evaluator.score_records(records, retrieved, tiny_lm).per_record["log_perplexity"]
    total = sum(n for _, n in parts)
    assert shares == pytest.approx([-lp * len(parts) / total for lp, _ in parts], rel=1e-4)
    assert float(np.mean(shares)) == pytest.approx(math.log(got), rel=1e-6)


def test_lrlm_prompt_keeps_document_order_and_the_query_chunk(tiny_lm):
    evaluator = LRLMEvaluator(TASKS.get("lrlm"), quiet(max_prompt_tokens=60))
    record = Record(
        query="QUERY chunk text", neg=["first chunk " * 3, "second chunk " * 40, "third chunk " * 3], answers=["next"]
    )
    # relevance: third, first, second; the budget holds the two short ones, the long one is cut or dropped
    keys = [RetrievedKey(record.neg[2], 2), RetrievedKey(record.neg[0], 0), RetrievedKey(record.neg[1], 1)]
    context = evaluator.render(tiny_lm.tokenizer, record, keys[:2]).context
    assert context.index("first") < context.index("third") < context.index("QUERY")
    assert context.endswith("QUERY chunk text ")
    long_context = evaluator.render(tiny_lm.tokenizer, record, keys).context
    assert token_lengths(tiny_lm.tokenizer, [long_context])[0] <= 60


def test_icl_evaluator_rejects_gold_outside_options(tiny_lm):
    evaluator = ICLEvaluator(TASKS.get("icl"), quiet())
    bad = Record(query="x", answers=["Maybe"], options=["Yes", "No"], source="dev.jsonl:7")
    with pytest.raises(UserError, match=r"dev\.jsonl:7.*answers"):
        evaluator.check_records([bad])


@pytest.mark.parametrize(
    ("task", "retrievers", "use_corpus", "expected"),
    [
        ("qa", ["none", "bm25"], False, {"contains_answer", "exact_match", "answer_logprob", "ndcg@10"}),
        ("chat", ["none", "recency", "random", "default"], False, {"perplexity"}),
        ("lrlm", ["none", "recency", "bm25"], False, {"perplexity"}),
        ("icl", ["none", "bm25", "default"], False, {"accuracy", "accuracy_macro"}),
        ("tool", ["random", "bm25"], True, {"ndcg@5", "recall@5", "mrr@5"}),
        ("convsearch", ["bm25", "random"], False, {"ndcg@3"}),
    ],
)
def test_scenarios_on_dev_data_give_finite_metrics(data_dir, tiny_lm, embedder, task, retrievers, use_corpus, expected):
    folder = data_dir / "tasks" / task
    results = evaluate(
        task,
        folder / "dev.jsonl",
        [build_retriever(r, load_embedder=lambda name: embedder) for r in retrievers],
        corpus=folder / "corpus.jsonl" if use_corpus else None,
        lm=tiny_lm,
        limit=3,
        max_prompt_tokens=512,
        max_new_tokens=4,
        show_progress=False,
    )
    assert results["retrievers"] == retrievers and results["n_records"] == 3
    assert expected <= set(results["metrics"])
    for name in retrievers:
        row = results["results"][name]
        if name == "none":
            assert not any("@" in m for m in row)  # no retrieval, no retrieval metrics
        for metric in expected:
            if name == "none" and "@" in metric:
                continue
            assert row[metric] is not None and math.isfinite(row[metric]), (name, metric)
    if "perplexity" in expected:
        assert results["lower_is_better"] == ["perplexity"]
        assert all(results["results"][n]["perplexity"] > 1 for n in retrievers)


def test_chat_retrieval_metrics_need_teacher_scores(data_dir, tiny_lm):
    records = load_records(data_dir / "tasks" / "chat" / "dev.jsonl")[:3]
    without = evaluate("chat", records, ["recency"], lm=tiny_lm, show_progress=False)
    assert "ndcg@1" not in without["results"]["recency"]
    for record in records:  # the latest turn is the teacher's favourite -> recency is perfect
        record.teacher_scores = [0.0] * (len(record.history) - 1) + [1.0]
    scored = evaluate("chat", records, ["recency"], lm=tiny_lm, downstream=False, show_progress=False)
    assert scored["results"]["recency"]["ndcg@1"] == pytest.approx(1.0)
    assert scored["downstream"] is None and scored["lm"] is None
