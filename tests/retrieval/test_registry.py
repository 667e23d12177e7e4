"""The one retriever registry (names -> retrievers for eval, negatives mining, search), one RRF, one JSON-lines
reader."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from llm_embedder.data.jsonl import iter_jsonl
from llm_embedder.data.records import load_records
from llm_embedder.errors import UserError
from llm_embedder.retrieval.baselines import BM25Retrieval, HybridRetrieval, IndexRetrieval, PoolRetriever
from llm_embedder.retrieval.bm25 import BM25Retriever
from llm_embedder.retrieval.dense import build_index_folder
from llm_embedder.retrieval.registry import build_retriever, corpus_retriever, is_index_target

KEYS = [
    "the cat sat on the mat",
    "dogs chase cats in the park",
    "quantum field theory lecture notes",
    "a recipe for apple pie",
    "cats and dogs living together",
]


class _Fixed(PoolRetriever):
    """Returns fixed rankings (to check fusion against the formula)."""

    def __init__(self, name, rankings):
        super().__init__(name)
        self.rankings = rankings

    def rank_candidates(self, queries, candidates, *, task):
        return self.rankings


def test_hybrid_candidate_ranking_is_rrf():
    a = [[2, 0, 1, 3], [1, 0]]
    b = [[0, 3, 2, 1], [0, 1]]
    hybrid = HybridRetrieval("h", [_Fixed("a", a), _Fixed("b", b)])
    got = hybrid.rank_candidates(["q1", "q2"], [["w", "x", "y", "z"], ["u", "v"]], task="qa")
    for i, n in enumerate((4, 2)):
        fused = np.zeros(n)
        for ranking in (a[i], b[i]):
            for rank, j in enumerate(ranking, start=1):
                fused[j] += 1 / (60 + rank)
        assert got[i] == [int(j) for j in np.argsort(-fused, kind="stable")]
    assert got == [[0, 2, 3, 1], [0, 1]]


def test_spec_strings_and_index_targets(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"title": "", "text": k}) + "\n" for k in KEYS))
    index = tmp_path / "idx"
    build_index_folder(corpus, index, embedder=None, task="qa", dense=False, bm25=True, show_progress=False)
    assert is_index_target(index) and is_index_target("milvus://h:1/c") and not is_index_target("default")
    retriever = build_retriever(f"mine={index}")
    assert isinstance(retriever, IndexRetrieval) and retriever.name == "mine"
    assert isinstance(build_retriever("bm25"), BM25Retrieval)
    keys = [f" {k}" for k in KEYS]  # the index's key template "{title} {text}"
    expected = BM25Retriever(keys).search(["cats dogs"], 3)
    got = corpus_retriever(str(index), keys, task="qa").search(["cats dogs"], 3)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6)
    with pytest.raises(UserError) as err:
        corpus_retriever(str(index), keys[:3], task="qa")
    assert err.value.message == f"index {index} covers 5 rows but the corpus has 3"
    with pytest.raises(UserError) as err:
        retriever.rank_candidates(["q"], [["a"]], task="qa")
    assert err.value.message == "retriever 'mine' is a prebuilt index; it cannot rank each record's own candidates"


def test_truncated_or_fake_gz_is_one_line(tmp_path):
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text('{"query": "q"}\n')
    good = gzip.compress(b'{"query": "q", "pos": ["p"]}\n' * 200)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError) as err:
        load_records(fake, task="qa")
    assert err.value.message.startswith(f"{fake}: not a readable gzip file (Not a gzipped file")
    with pytest.raises(UserError) as err:
        list(iter_jsonl(truncated))
    assert err.value.message == (
        f"{truncated}: not a readable gzip file (it ends before the end of the compressed stream)"
    )
