"""Retrieval: faiss index (types, persistence, atomic writes under kill -9, resumable builds), BM25, fusion, CLI,
and BM25 / the bundled encoder beating random on the development tasks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.cli.main import main
from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import load_records
from llm_embedder.errors import UserError
from llm_embedder.evaluation.metrics import compute_metrics, record_query_ids, run_from_result
from llm_embedder.retrieval import Retriever, SearchResult
from llm_embedder.retrieval.bm25 import BM25Retriever, rank_candidates_bm25
from llm_embedder.retrieval.dense import DenseRetriever, build_index_folder, rank_candidates_dense
from llm_embedder.retrieval.folder import read_manifest
from llm_embedder.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion
from llm_embedder.retrieval.index import DenseIndex, IndexParams
from llm_embedder.retrieval.ranking import top_k_desc

ROOT = Path(__file__).resolve().parents[1]

# A deterministic stand-in for LLMEmbedder (hash-seeded unit vectors), importable by subprocesses: it makes the
# kill/resume tests fast and lets them count how many rows were encoded.
FAKE_EMBEDDER = textwrap.dedent(
    """
    import hashlib, time
    import numpy as np
    from llm_embedder.tasks.registry import TASKS

    class FakeEmbedder:
        source = "fake"
        dim = 16
        batch_size = 8
        use_instructions = True
        query_max_length = key_max_length = 64
        tasks = TASKS

        def __init__(self, delay=0.0):
            self.delay = delay
            self.encoded = 0

        def task(self, name):
            return TASKS.get(name)

        def instruction(self, task, side):
            spec = TASKS.get(task)
            return spec.query_instruction if side == "query" else spec.key_instruction

        def encode_keys(self, texts, task="qa", batch_size=None, show_progress_bar=None):
            time.sleep(self.delay)
            self.encoded += len(texts)
            return np.stack([vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

        encode_queries = encode_keys

    def vector(text):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        v = np.random.default_rng(seed).normal(size=16).astype(np.float32)
        return v / np.linalg.norm(v)
    """
)


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    (tmp_path / "fake_embedder.py").write_text(FAKE_EMBEDDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import fake_embedder

    return importlib.reload(fake_embedder)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_corpus(path: Path, n: int, start: int = 0) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for i in range(start, start + n):
            handle.write(json.dumps({"title": f"t{i}", "text": f"passage number {i} about topic {i % 7}"}) + "\n")


# ------------------------------------------------------------------ top-k and the faiss index
def test_top_k_breaks_ties_by_position():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, np.nan])
    assert top_k_desc(scores, 2).tolist() == [1, 2]
    assert top_k_desc(scores, 10).tolist() == [1, 2, 4, 3, 0, 5]
    assert top_k_desc(scores, 0).tolist() == []


def test_flat_index_is_exact_and_round_trips(tmp_path):
    x = unit_vectors(3000, 24)
    q = unit_vectors(20, 24, seed=1)
    ids = np.arange(3000) * 2 + 100  # faiss positions map back to arbitrary corpus rows
    index = DenseIndex.build(x, ids=ids)
    result = index.search(q, 5)
    brute = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :5]
    assert (result.ids == ids[brute]).all()
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert loaded._mmapped
    again = loaded.search(q, 5)
    assert (again.ids == result.ids).all() and np.allclose(again.scores, result.scores)
    # incremental add on a memory-mapped index (faiss would abort on it: it is reloaded first), saved again
    loaded.add(unit_vectors(10, 24, seed=3))
    assert loaded.ids[-1] == ids.max() + 10
    loaded.save(tmp_path / "idx")
    assert DenseIndex.load(tmp_path / "idx", verify=True).ntotal == 3010
    # k beyond the index size pads with -1 / -inf
    small = DenseIndex.build(x[:3]).search(q[:1], 5)
    assert small.ids[0, 3:].tolist() == [-1, -1] and np.isneginf(small.scores[0, 3:]).all()
    with pytest.raises(UserError):
        index.search(unit_vectors(1, 8), 3)


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq", "ivfpq-rerank", "IVF32,Flat"])
def test_approximate_indexes_find_most_true_neighbours(tmp_path, index_type):
    # clustered data, like real embeddings: approximate search must agree with exact search on most neighbours
    centers = unit_vectors(50, 32, seed=5)
    labels = np.random.default_rng(6).integers(0, 50, size=10000)
    x = centers[labels] + 0.35 * unit_vectors(10000, 32, seed=7)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.05 * unit_vectors(50, 32, seed=8)
    exact = DenseIndex.build(x).search(q, 10).ids
    rerank = 16 if index_type == "ivfpq-rerank" else 0  # 4-byte codes here: re-rank deeply
    kind = "ivfpq" if rerank else index_type
    params = IndexParams(kind, nlist=32, pq_m=4, nprobe=8, hnsw_m=16, ef_construction=64, rerank=rerank)
    approx = DenseIndex.build(x, params=params)
    approx.save(tmp_path / index_type)
    loaded = DenseIndex.load(tmp_path / index_type)
    assert loaded._mmapped and loaded.factory.endswith(",RFlat") == bool(rerank)
    found = loaded.search(q, 10)
    got = found.ids
    # scores are inner products for every index type (ivfpq searches by L2 and converts), up to PQ error
    true_scores = np.einsum("qd,qkd->qk", q, x[got])
    assert np.allclose(found.scores, true_scores, atol=0.1 if index_type == "ivfpq" else 1e-4)
    if index_type == "ivfpq":  # compressed codes: the true nearest neighbour must be among the 10 found
        recall = np.mean([e[0] in g for g, e in zip(got, exact, strict=True)])
    else:  # exact vectors (re-ranking included): most of the true top 10
        recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
    assert recall > 0.8, recall
    assert (got == approx.search(q, 10).ids).all()
    if rerank:
        loaded.set_search_params(rerank=1)  # no re-ranking depth: back to PQ-only quality
        assert (
            np.mean([len(set(g) & set(e)) / 10 for g, e in zip(loaded.search(q, 10).ids, exact, strict=True)]) < recall
        )
    else:
        with pytest.raises(UserError, match="no exact vectors"):
            loaded.set_search_params(rerank=2)


def test_index_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="needs at least 10,000"):
        DenseIndex.build(unit_vectors(100, 16), index_type="ivfpq")
    with pytest.raises(UserError, match="unknown index type"):
        DenseIndex.build(unit_vectors(100, 16), index_type="nonsense")
    with pytest.raises(UserError, match="not found"):
        DenseIndex.load(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "dense.faiss").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a complete index"):
        DenseIndex.load(tmp_path / "half")
    DenseIndex.build(unit_vectors(100, 16)).save(tmp_path / "ok")
    with open(tmp_path / "ok" / "dense.faiss", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(UserError, match="bytes"):
        DenseIndex.load(tmp_path / "ok")


SAVE_LOOP = textwrap.dedent(
    """
    import sys
    import numpy as np
    from llm_embedder.retrieval.index import DenseIndex
    target = sys.argv[1]
    x = np.random.default_rng(0).normal(size=(20000, 64)).astype(np.float32)
    index = DenseIndex.build(x)
    index.save(target)
    print("saved", flush=True)
    while True:
        index.add(x[:100])
        index.save(target)
    """
)


def test_kill_during_index_save_never_leaves_a_broken_index(tmp_path):
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    target = tmp_path / "idx"
    for delay in (0.05, 0.3, 0.8):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "saved"
            time.sleep(delay + random.random() * 0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        loaded = DenseIndex.load(target, verify=True)  # a complete version (old or new), never a torn one
        assert loaded.ntotal >= 20000 and (loaded.ntotal - 20000) % 100 == 0
        assert len(loaded.ids) == loaded.ntotal
    # the next write cleans the temporary folders the killed writers left behind
    DenseIndex.build(unit_vectors(10, 64)).save(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []


BUILD_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from fake_embedder import FakeEmbedder
    from llm_embedder.retrieval.dense import build_index_folder
    build_index_folder(sys.argv[1], sys.argv[2], embedder=FakeEmbedder(delay=0.3), task="qa",
                       shard_size=20, show_progress=False, bm25=True)
    """
)


def test_killed_index_build_resumes_from_finished_shards(tmp_path, fake):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 200)
    target = tmp_path / "idx"
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(corpus), str(target), str(tmp_path)])
    partial = tmp_path / ".idx.partial"
    deadline = time.time() + 120
    while len(list(partial.glob("shard-*.npy"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()  # killed mid-build: no index folder at all, not a partial one
    finished = len(list(partial.glob("shard-*.npy")))
    assert 3 <= finished < 10

    embedder = fake.FakeEmbedder()
    logs: list[str] = []
    manifest = build_index_folder(
        corpus, target, embedder=embedder, task="qa", shard_size=20, show_progress=False, bm25=True, log=logs.append
    )
    assert embedder.encoded == 200 - 20 * finished, logs
    assert any("resuming" in line for line in logs)
    assert manifest["count"] == 200 and not partial.exists()
    index = DenseIndex.load(target)
    keys = Corpus.from_file(corpus, "{title} {text}").keys
    expected = np.stack([fake.vector(k) for k in keys])
    assert np.allclose(np.stack([index.reconstruct(i) for i in range(200)]), expected, atol=1e-6)
    assert (index.ids == np.arange(200)).all()


def test_update_adds_only_appended_rows(tmp_path, fake):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 30)
    target = tmp_path / "idx"
    build_index_folder(corpus, target, embedder=fake.FakeEmbedder(), task="qa", show_progress=False, bm25=True)
    with pytest.raises(UserError, match="already exists"):
        build_index_folder(corpus, target, embedder=fake.FakeEmbedder(), task="qa", show_progress=False, bm25=True)
    write_corpus(corpus, 5, start=30)
    embedder = fake.FakeEmbedder()
    manifest = build_index_folder(
        corpus, target, embedder=embedder, task="qa", mode="update", show_progress=False, bm25=True
    )
    assert embedder.encoded == 5 and manifest["count"] == 35
    retriever = DenseRetriever.from_folder(target, fake.FakeEmbedder())
    key = "t33 passage number 33 about topic 5"
    assert retriever.search([key], 1).ids[0, 0] == 33  # the fake encodes queries like keys
    assert BM25Retriever.load(target).search(["number 34"], 1).ids[0, 0] == 34
    corpus.write_text(corpus.read_text().replace("number 3 ", "number three "))
    with pytest.raises(UserError, match="changed before row"):
        build_index_folder(
            corpus, target, embedder=fake.FakeEmbedder(), task="qa", mode="update", show_progress=False, bm25=True
        )
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an index folder"):
        build_index_folder(corpus, tmp_path / "precious", embedder=fake.FakeEmbedder(), task="qa", mode="overwrite")


# ------------------------------------------------------------------ BM25 and fusion
def test_bm25_ranks_by_terms_stems_and_round_trips(tmp_path):
    keys = ["The cat sat on the mat.", "Dogs are running in the park.", "A cat was running home.", "Nothing here."]
    bm25 = BM25Retriever(keys)
    assert isinstance(bm25, Retriever)
    result = bm25.search(["cats running", "zebra", "the"], k=3)
    assert result.ids[0].tolist() == [2, 0, 1]  # stemming: cats -> cat, running -> run
    assert result.ids[1].tolist() == [-1, -1, -1] and result.ids[2].tolist() == [-1, -1, -1]  # no term / stop words
    bm25.save(tmp_path / "bm")
    loaded = BM25Retriever.load(tmp_path / "bm")
    again = loaded.search(["cats running"], k=3)
    assert (again.ids == result.ids[:1]).all() and np.allclose(again.scores, result.scores[:1])
    assert rank_candidates_bm25("running cat", keys) == [2, 0, 1, 3]
    assert rank_candidates_bm25("zebra", keys) == [0, 1, 2, 3]
    assert rank_candidates_bm25("x", []) == []
    with pytest.raises(UserError):
        BM25Retriever([])


class FixedRetriever:
    def __init__(self, name: str, ranking: list[int]) -> None:
        self.name = name
        self.ranking = ranking

    def search(self, queries, k=10):
        ids = np.array([self.ranking[:k]] * len(queries))
        return SearchResult(ids, -np.arange(ids.shape[1], dtype=np.float32)[None].repeat(len(queries), 0))


def test_reciprocal_rank_fusion_by_hand():
    a, b = FixedRetriever("a", [1, 2, 3]), FixedRetriever("b", [3, 1, 4])
    hybrid = HybridRetriever([a, b], k_rrf=60)
    result = hybrid.search(["q"], k=4)
    expected = {1: 1 / 61 + 1 / 62, 3: 1 / 63 + 1 / 61, 2: 1 / 62, 4: 1 / 63}
    order = sorted(expected, key=lambda r: (-expected[r], r))
    assert result.ids[0].tolist() == order
    assert np.allclose(result.scores[0], [expected[r] for r in order])
    weighted = reciprocal_rank_fusion([a.search(["q"], 3), b.search(["q"], 3)], 2, weights=[0.0, 1.0])
    assert weighted.ids[0].tolist() == [3, 1]
    with pytest.raises(UserError):
        HybridRetriever([a], weights=[1.0, 2.0])


# ------------------------------------------------------------------ on the development data
def _icl_qrels(records, rows, query_ids):
    """icl has no labelled positives: count as relevant the pool examples of the same task with the gold label."""
    qrels = {}
    for record, qid in zip(records, query_ids, strict=True):
        suffix = "\n" + record.query.split("\n")[-1] + "\n" + record.answers[0]
        relevant = {str(i): 1 for i, row in enumerate(rows) if row["text"].endswith(suffix)}
        if relevant:
            qrels[qid] = relevant
    return qrels


def _random_baseline(n_keys, n_queries, query_ids, qrels, metrics, k=10):
    values = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        ids = np.stack([rng.permutation(n_keys)[:k] for _ in range(n_queries)])
        fake = SearchResult(ids, -np.arange(k, dtype=np.float32)[None].repeat(n_queries, 0))
        values.append(compute_metrics(run_from_result(fake, query_ids), qrels, metrics))
    return {m: float(np.mean([v[m] for v in values])) for m in metrics}


SUBSETS = {"qa": (12, 36), "convsearch": (8, 25), "tool": (15, 40), "icl": (20, 80)}


@pytest.mark.parametrize("task", list(SUBSETS))
def test_bm25_and_base_encoder_beat_random(task, data_dir, embedder):
    """On a subsample of each dev set (pos rows + random other rows), both retrievers beat random clearly."""
    spec = embedder.task(task)
    n_queries, n_other = SUBSETS[task]
    rng = random.Random(0)
    records = rng.sample(load_records(data_dir / "tasks" / task / "dev.jsonl"), n_queries)
    corpus = Corpus.from_file(data_dir / "tasks" / task / "corpus.jsonl", spec.key_template)
    if task == "icl":
        rows = sorted(rng.sample(range(len(corpus)), n_other))
    else:
        pos = {i for r in records for i in r.pos_index}
        rows = sorted(pos | set(rng.sample([i for i in range(len(corpus)) if i not in pos], n_other)))
    keys = [corpus.keys[i] for i in rows]
    query_ids = record_query_ids(records)
    if task == "icl":
        qrels = _icl_qrels(records, [corpus.rows[i] for i in rows], query_ids)
    else:
        where = {row: i for i, row in enumerate(rows)}
        qrels = {q: {str(where[i]): 1 for i in r.pos_index} for q, r in zip(query_ids, records, strict=True)}
    metrics = list(spec.evaluation.metrics)
    main = spec.evaluation.main_metric
    queries = [r.query for r in records]
    random_score = _random_baseline(len(keys), len(records), query_ids, qrels, metrics)
    bm25 = compute_metrics(run_from_result(BM25Retriever(keys).search(queries, 10), query_ids), qrels, metrics)
    saved = embedder.query_max_length, embedder.key_max_length
    embedder.query_max_length = embedder.key_max_length = 128  # CPU time: shorter inputs, same conclusion
    try:
        dense = compute_metrics(
            run_from_result(DenseRetriever(embedder, task, keys).search(queries, 10), query_ids), qrels, metrics
        )
    finally:
        embedder.query_max_length, embedder.key_max_length = saved
    margin = 1.5 * random_score[main] + 0.05
    assert bm25[main] > margin, (task, bm25, random_score)
    assert dense[main] > margin, (task, dense, random_score)


def test_dense_candidate_ranking(embedder):
    history = [
        "Speaker 1: I adopted a puppy last week.\nSpeaker 2: What breed is it?",
        "Speaker 1: I work as a nurse.\nSpeaker 2: That must be tiring.",
        "Speaker 1: My favourite food is sushi.\nSpeaker 2: Mine is pizza.",
    ]
    rankings = rank_candidates_dense(
        embedder, "chat", ["How is your new dog doing?", "Any good restaurants?"], [history, history[1:]]
    )
    assert rankings[0][0] == 0 and sorted(rankings[0]) == [0, 1, 2]
    assert rankings[1][0] == 1 and sorted(rankings[1]) == [0, 1]


# ------------------------------------------------------------------ the CLI
def test_index_and_search_cli(tmp_path, data_dir, capsys, embedder, monkeypatch):
    # the CLI's encoder loads are served by the session's encoder (same weights; saves CPU time)
    import llm_embedder.model.embedder as embedder_module

    monkeypatch.setattr(embedder_module, "LLMEmbedder", lambda model=None, **kwargs: embedder)
    corpus = tmp_path / "corpus.jsonl"
    with open(data_dir / "tasks" / "qa" / "corpus.jsonl", encoding="utf-8") as source:
        corpus.write_text("".join(next(source) for _ in range(12)), encoding="utf-8")
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    target = tmp_path / "idx"
    assert (
        main(["index", "--task", "qa", str(corpus), "-o", str(target), "--bm25", "--shard-size", "10", "--no-progress"])
        == 0
    )
    manifest = read_manifest(target, verify=True)
    assert manifest["encoder"]["task"] == "qa" and manifest["corpus"]["key_template"] == "{title} {text}"
    assert manifest["count"] == 12 and manifest["dense"]["factory"] == "Flat"
    capsys.readouterr()

    title = rows[7]["title"]
    assert main(["search", str(target), f"{title}: {rows[7]['text'][:80]}", "-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("  1. [row 7]") and title in printed

    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"query": rows[3]["text"][:100], "query_id": "a"})
        + "\n"
        + json.dumps({"query": rows[5]["text"][:100]})
        + "\n"
    )
    out = tmp_path / "hits.jsonl"
    for kind in ("dense", "bm25", "hybrid"):
        assert (
            main(["search", str(target), "--queries", str(queries), "-k", "2", "--retriever", kind, "-o", str(out)])
            == 0
        )
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["query_id"] for line in lines] == ["a", 1]
        assert lines[0]["hits"][0]["row"] == 3 and lines[0]["hits"][0]["title"] == rows[3]["title"], kind
        assert lines[1]["hits"][0]["row"] == 5, kind

    assert main(["search", str(tmp_path / "nope"), "query"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["index", "--task", "qa", str(corpus), "-o", str(target)]) == 2
    assert main(["index", "--task", "qa", str(corpus), "-o", str(tmp_path / "x"), "--index-type", "none"]) == 2


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    assert os.environ.get("TOKENIZERS_PARALLELISM") == "false"
