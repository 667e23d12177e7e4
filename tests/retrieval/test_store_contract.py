"""The store contract (retrieval/store/base.py), one suite run against every backend: the embedded folder store and
Milvus (a real ``milvus-lite server`` over gRPC, see conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.errors import UserError
from llm_embedder.retrieval.store import CollectionInfo, Document, Store, open_store, split_uri
from llm_embedder.retrieval.store.embedded import EmbeddedStore
from llm_embedder.retrieval.store.filters import matches, parse_filter

ENCODER = "test-encoder|instructions=off|pooling=mean|dim=16"
DIM = 16
BACKENDS = ["embedded", "milvus"]


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Backend:
    """Opens (and re-opens) one store of one backend; each test gets its own collection name."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.name = "c_" + uuid.uuid4().hex[:10]
        if kind == "milvus":
            self.server = request.getfixturevalue("milvus_server")
            self.uri = self.server.uri
        else:
            self.uri = str(tmp_path / "store")
        self.store: Store = open_store(self.uri)

    def reopen(self) -> Store:
        self.store.close()
        self.store = open_store(self.uri)
        return self.store

    def collection(self, index: str = "flat", encoder: str = ENCODER, dim: int = DIM):
        return self.store.create_collection(CollectionInfo(self.name, "qa", encoder, dim, index=index))

    def close(self) -> None:
        try:
            self.store.drop_collection(self.name)
        finally:
            self.store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path, request)
    try:
        yield b
    finally:
        b.close()


# ---------------------------------------------------------------------------------------------------- filters
FILTER_DOCS = {
    "d0": {"lang": "en", "year": 2019, "flag": True, "n": 1, "tag": "a"},
    "d1": {"lang": "en", "year": 2020, "flag": False, "n": 1.0, "tag": "b"},
    "d2": {"lang": "de", "year": 2021.5, "flag": True, "n": "1", "tag": "c"},
    "d3": {"lang": "fr", "year": "2021", "tag": ["a", "b"]},
    "d4": {"lang": 5, "year": 2023, "n": 2},
    "d5": {},
    "d6": {"lang": ["en"], "year": 2024, "flag": 1, "tag": "a"},
}
#: filter -> ids matching (written out by hand; also checked against the reference evaluator)
FILTER_CASES = [
    ({"lang": "en"}, {"d0", "d1"}),
    ({"lang": {"$eq": "en"}}, {"d0", "d1"}),
    ({"lang": {"$ne": "en"}}, {"d2", "d3", "d4"}),  # missing (d5) and list (d6) never match
    ({"year": {"$gte": 2020, "$lt": 2024}}, {"d1", "d2", "d4"}),  # "2021" is a string: no order
    ({"year": {"$gt": 2019}}, {"d1", "d2", "d4", "d6"}),
    ({"year": 2020.0}, {"d1"}),
    ({"year": {"$lte": 2019}}, {"d0"}),
    ({"flag": True}, {"d0", "d2"}),  # 1 is a number, not true
    ({"flag": {"$ne": True}}, {"d1", "d6"}),
    ({"flag": 1}, {"d6"}),
    ({"n": 1}, {"d0", "d1"}),  # 1 == 1.0, never "1"
    ({"n": {"$ne": "1"}}, {"d0", "d1", "d4"}),
    ({"tag": {"$in": ["a", "b"]}}, {"d0", "d1", "d6"}),
    ({"tag": {"$nin": ["a"]}}, {"d1", "d2"}),
    ({"lang": "en", "year": {"$gt": 2019}}, {"d1"}),
    ({"lang": {"$in": ["en", 5]}}, {"d0", "d1", "d4"}),
    ({"missing": {"$ne": 0}}, set()),
]


@pytest.mark.parametrize(("filter", "expected"), FILTER_CASES, ids=[str(f) for f, _ in FILTER_CASES])
def test_reference_filter_semantics(filter, expected):
    conditions = parse_filter(filter)
    assert {d for d, meta in FILTER_DOCS.items() if matches(meta, conditions)} == expected


def test_filter_semantics_identical(backend):
    c = backend.collection()
    ids = list(FILTER_DOCS)
    c.upsert([Document(i, f"text {i}", metadata=m) for i, m in FILTER_DOCS.items()], unit(len(ids), 1), encoder=ENCODER)
    query = unit(1, 2)[0]
    for filter, expected in FILTER_CASES:
        hits = c.search(vector=query, encoder=ENCODER, k=20, filter=filter)
        assert {h.id for h in hits} == expected, filter
        bm25 = c.search(text="text", k=20, mode="bm25", filter=filter)
        assert {h.id for h in bm25} == expected, filter
    # delete by filter removes exactly the matching documents
    assert c.delete(filter={"lang": {"$ne": "en"}}) == 3
    assert sorted(d.id for d in c.get(ids) if d is not None) == ["d0", "d1", "d5", "d6"]


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ({"bad-name": 1}, "filter field 'bad-name' is not an identifier"),
        ({"x": {"$gt": "a"}}, "filter field 'x': $gt needs a number, got 'a'"),
        ({"x": {"$in": []}}, "filter field 'x': $in needs a non-empty list, got []"),
        ({"x": {"$or": [1]}}, "filter field 'x': unknown operator '$or'"),
        ({"x": [1, 2]}, "filter field 'x': $eq needs a string, number or boolean, got [1, 2]"),
        ({"x": {}}, "filter field 'x': empty condition"),
    ],
)
def test_bad_filters_refused(backend, filter, message):
    c = backend.collection()
    with pytest.raises(UserError) as err:
        c.search(vector=unit(1, 0)[0], encoder=ENCODER, filter=filter)
    assert err.value.message == message


# ---------------------------------------------------------------------------------------------------- scopes
def test_scope_isolation(backend):
    c = backend.collection()
    docs = [Document(str(i), f"shared words number{i}", metadata={"i": i}) for i in range(6)]
    c.upsert(docs, unit(6, 3), encoder=ENCODER, scope="A")
    c.upsert(docs[:4], unit(4, 4), encoder=ENCODER, scope="B")
    q = unit(1, 5)[0]
    assert c.search(vector=q, encoder=ENCODER, k=10, scope="C") == []
    assert c.search(text="shared words", k=10, mode="bm25", scope="C") == []
    assert c.search(vector=q, text="shared", encoder=ENCODER, k=10, mode="hybrid", scope="C") == []
    assert c.get(["0", "1"], scope="C") == [None, None]
    assert (c.count(scope="A"), c.count(scope="B"), c.count(scope="C"), c.count(scope=None)) == (6, 4, 0, 10)
    # the same id in two scopes names two documents with their own vectors
    a = c.search(vector=unit(6, 3)[0], encoder=ENCODER, k=1, scope="A")[0]
    b = c.search(vector=unit(6, 3)[0], encoder=ENCODER, k=1, scope="B")[0]
    assert a.id == "0" and a.score == pytest.approx(1.0, abs=1e-5) and b.score < 0.999
    # a delete in A never touches B
    assert c.delete(scope="A", filter={"i": {"$lt": 3}}) == 3
    assert c.delete(scope="A", ids=["3"]) == 1
    assert (c.count(scope="A"), c.count(scope="B")) == (2, 4)
    assert [d.id for d in c.get(["0", "1", "2", "3"], scope="B")] == ["0", "1", "2", "3"]
    assert {h.id for h in c.search(vector=q, encoder=ENCODER, k=10, scope="A")} == {"4", "5"}


def test_upsert_is_idempotent_and_replaces(backend):
    c = backend.collection()
    docs = [Document(str(i), f"passage {i}", title=f"t{i}", metadata={"v": 1}) for i in range(5)]
    vectors = unit(5, 6)
    assert c.upsert(docs, vectors, encoder=ENCODER) == ["0", "1", "2", "3", "4"]
    c.upsert(docs, vectors, encoder=ENCODER)
    assert c.count() == 5
    new = Document("2", "rewritten passage", title="new", metadata={"v": 2, "tags": ["x", "y"]})
    c.upsert([new], unit(1, 7), encoder=ENCODER)
    assert c.count() == 5
    assert c.get(["2", "9", "0"]) == [new, None, docs[0]]
    hits = c.search(vector=unit(1, 7)[0], encoder=ENCODER, k=5)
    assert hits[0].document == new and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.id for h in hits].count("2") == 1
    assert {h.id for h in c.search(vector=unit(1, 7)[0], encoder=ENCODER, k=5, filter={"v": 2})} == {"2"}
    with pytest.raises(UserError) as err:
        c.upsert([docs[0], docs[0]], unit(2, 8), encoder=ENCODER)
    assert err.value.message == "document id '0' appears twice in one upsert"


def test_delete(backend):
    c = backend.collection()
    c.upsert([Document(str(i), "x", metadata={"i": i}) for i in range(10)], unit(10, 9), encoder=ENCODER)
    assert c.delete(ids=["1", "2", "nope"]) == 2
    assert c.delete(ids=["3", "4", "5"], filter={"i": {"$gte": 4}}) == 2
    assert c.delete(filter={"i": {"$gt": 8}}) == 1
    assert c.delete(ids=["1"]) == 0
    assert sorted(d.id for d in c.get([str(i) for i in range(10)]) if d) == ["0", "3", "6", "7", "8"]
    for selector in ({}, {"ids": []}, {"filter": {}}, {"ids": [], "filter": {}}):
        with pytest.raises(UserError) as err:
            c.delete(**selector)
        assert err.value.message == "delete needs ids or a filter"
    assert c.count() == 5


def test_scan_returns_every_document_once_with_its_vector(backend):
    c = backend.collection()
    written = {}
    for k, scope in enumerate(["", "tenant-a", "tenant-b"]):
        docs = [Document(f"{scope}{i}", f"text {scope} {i}", title=f"t{i}", metadata={"i": i}) for i in range(90)]
        vectors = unit(90, 20 + k)
        c.upsert(docs, vectors, encoder=ENCODER, scope=scope)
        written.update({(scope, d.id): (d, v) for d, v in zip(docs, vectors, strict=True)})
    replaced = Document("tenant-a3", "replaced", metadata={"i": -1})
    c.upsert([replaced], unit(1, 30), encoder=ENCODER, scope="tenant-a")
    written[("tenant-a", "tenant-a3")] = (replaced, unit(1, 30)[0])
    assert c.delete(ids=["tenant-b5", "tenant-b6"], scope="tenant-b") == 2
    del written[("tenant-b", "tenant-b5")], written[("tenant-b", "tenant-b6")]
    seen = {}
    for scope, docs, vectors in c.scan(batch_size=64):
        assert 0 < len(docs) <= 64 and vectors.shape == (len(docs), DIM) and vectors.dtype == np.float32
        for doc, vector in zip(docs, vectors, strict=True):
            assert (scope, doc.id) not in seen
            seen[(scope, doc.id)] = (doc, vector)
    assert seen.keys() == written.keys()
    for key, (doc, vector) in written.items():
        assert seen[key][0] == doc
        np.testing.assert_allclose(seen[key][1], vector, atol=1e-6)


def test_search_modes_and_arguments(backend):
    c = backend.collection()
    texts = ["the quick brown fox", "a lazy dog sleeps", "quantum chromodynamics lecture", "brown bears eat fish"]
    c.upsert([Document(str(i), t) for i, t in enumerate(texts)], unit(4, 10), encoder=ENCODER)
    assert [h.id for h in c.search(text="chromodynamics", k=3, mode="bm25")] == ["2"]
    hybrid = c.search(vector=unit(4, 10)[1], text="chromodynamics", encoder=ENCODER, k=2, mode="hybrid")
    dense_rank = 1 + list(np.argsort(-(unit(4, 10) @ unit(4, 10)[1]))).index(2)
    # RRF(60): "2" is first by BM25 and dense_rank-th by vector, "1" first by vector and absent from BM25
    assert [h.id for h in hybrid] == ["2", "1"]
    assert [h.score for h in hybrid] == pytest.approx([1 / 61 + 1 / (60 + dense_rank), 1 / 61], abs=1e-6)
    with pytest.raises(UserError) as err:
        c.search(text="x", mode="dense")
    assert err.value.message == "dense search needs a query vector"
    with pytest.raises(UserError) as err:
        c.search(vector=unit(1, 0)[0], encoder=ENCODER, mode="fuzzy")  # type: ignore[arg-type]
    assert err.value.message == "unknown search mode 'fuzzy'"


# ---------------------------------------------------------------------------------------------------- encoders
def test_vectors_of_another_encoder_or_dimension_refused(backend):
    c = backend.collection()
    doc = [Document("a", "x")]
    with pytest.raises(UserError) as err:
        c.upsert(doc, unit(1, 0), encoder="other|dim=16")
    assert err.value.message == (
        f"collection {backend.name!r} holds vectors of encoder {ENCODER!r}; the vectors came from 'other|dim=16'"
    )
    with pytest.raises(UserError) as err:
        c.upsert(doc, unit(1, 0, dim=8), encoder=ENCODER)
    assert (
        err.value.message
        == f"collection {backend.name!r} expects 1 vectors of dimension 16, the vectors have shape (1, 8)"
    )
    with pytest.raises(UserError) as err:
        c.search(vector=unit(1, 0)[0], encoder="other")
    assert "query vectors came from 'other'" in err.value.message
    bad = unit(1, 0)
    bad[0, 0] = np.nan
    with pytest.raises(UserError) as err:
        c.upsert(doc, bad, encoder=ENCODER)
    assert err.value.message == "the vectors contain NaN or inf values"
    with pytest.raises(UserError) as err:
        c.upsert(doc, unit(1, 0) * 2, encoder=ENCODER)
    assert err.value.message == "the vectors are not L2-normalised"
    with pytest.raises(UserError) as err:
        backend.store.create_collection(CollectionInfo(backend.name, "qa", "other", DIM), exist_ok=True)
    assert err.value.message.startswith(f"collection {backend.name!r} exists with task 'qa', encoder {ENCODER!r}")
    assert (
        backend.store.create_collection(CollectionInfo(backend.name, "qa", ENCODER, DIM), exist_ok=True).info.dim == 16
    )
    with pytest.raises(UserError) as err:
        backend.store.collection("nope")
    assert err.value.message.startswith(f"no collection 'nope' in {backend.uri} (known: ")
    assert c.count() == 0


# ---------------------------------------------------------------------------------------------------- persistence
def test_restart_persistence(backend):
    c = backend.collection()
    c.upsert(
        [Document(str(i), f"doc {i}", metadata={"i": i}) for i in range(8)], unit(8, 11), encoder=ENCODER, scope="s"
    )
    c.delete(scope="s", ids=["0"])
    before = [h.id for h in c.search(vector=unit(1, 12)[0], encoder=ENCODER, k=5, scope="s")]
    if backend.kind == "milvus":  # a clean server restart on the same data folder
        backend.store.close()
        backend.server.stop()
        backend.server.start()
    store = backend.reopen()
    c = store.collection(backend.name)
    assert (c.info.task, c.info.encoder, c.info.dim) == ("qa", ENCODER, DIM)
    assert c.count(scope="s") == 7
    assert [h.id for h in c.search(vector=unit(1, 12)[0], encoder=ENCODER, k=5, scope="s")] == before
    assert c.get(["0", "5"], scope="s")[1] == Document("5", "doc 5", metadata={"i": 5})


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from llm_embedder.retrieval.store import CollectionInfo, Document, open_store

    store = open_store(sys.argv[1])
    c = store.create_collection(CollectionInfo("w", "qa", "enc", 16), exist_ok=True)
    rng = np.random.default_rng(0)
    for batch in range(10_000):
        v = rng.normal(size=(5, 16)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        c.upsert([Document(f"{batch}-{j}", "x" * 2000) for j in range(5)], v, encoder="enc")
        if batch % 3 == 2:
            c.delete(ids=[f"{batch}-0"])
        print(batch, flush=True)  # acknowledged
    """
)


def test_embedded_acknowledged_writes_survive_kill_9(tmp_path):
    uri = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, uri], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with EmbeddedStore(uri) as store:
        c = store.collection("w")
        n = c.count()
        batches = sorted({int(d.split("-")[0]) for d in _all_ids(c, n)})
        # every acknowledged batch is there whole; a batch in flight is all there or absent
        assert batches[: acknowledged + 1] == list(range(acknowledged + 1))
        for b in batches:
            expected = {f"{b}-{j}" for j in range(5)} - ({f"{b}-0"} if b % 3 == 2 and b <= acknowledged else set())
            present = {d.id for d in c.get(sorted({f"{b}-{j}" for j in range(5)})) if d is not None}
            assert present == expected or (b > acknowledged and len(present) in (4, 5))


def _all_ids(c, n):
    hits = c.search(vector=unit(1, 0)[0], encoder="enc", k=max(n, 1))
    return [h.id for h in hits]


def test_embedded_half_written_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        EmbeddedStore(tmp_path)
    assert err.value.message == f"{tmp_path} exists and is not a store folder"
    with pytest.raises(UserError) as err:
        open_store(tmp_path / "absent", create=False)
    assert err.value.message == f"{tmp_path / 'absent'} is not a store (no store.sqlite)"


# ---------------------------------------------------------------------------------------------------- cross-backend
def test_same_exact_top10_on_both_backends(tmp_path, milvus_server):
    keys = unit(400, 13)
    queries = unit(25, 14)
    docs = [Document(f"k{i}", f"key {i}", metadata={"even": i % 2 == 0}) for i in range(400)]
    results = []
    for uri in (str(tmp_path / "store"), milvus_server.uri):
        store = open_store(uri)
        name = "x_" + uuid.uuid4().hex[:8]
        try:
            c = store.create_collection(CollectionInfo(name, "qa", ENCODER, DIM))
            for lo in range(0, 400, 150):
                c.upsert(docs[lo : lo + 150], keys[lo : lo + 150], encoder=ENCODER, scope="t")
            plain = c.search_many(vectors=queries, encoder=ENCODER, k=10, scope="t")
            filtered = c.search_many(vectors=queries, encoder=ENCODER, k=10, scope="t", filter={"even": True})
            results.append(([[h.id for h in hits] for hits in plain], [[h.id for h in hits] for hits in filtered]))
            scores = [[h.score for h in hits] for hits in plain]
        finally:
            store.drop_collection(name)
            store.close()
    expected = np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :10]
    assert results[0][0] == [[f"k{i}" for i in row] for row in expected]
    assert results[0] == results[1]
    np.testing.assert_allclose(scores, np.sort(queries @ keys.T, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_embedded_ann_index_and_compaction(tmp_path):
    with EmbeddedStore(tmp_path / "s") as store:
        c = store.create_collection(CollectionInfo("a", "qa", ENCODER, DIM, index="hnsw"))
        keys = unit(2000, 15)
        c.upsert([Document(str(i), "x", metadata={"i": i}) for i in range(2000)], keys, encoder=ENCODER)
        assert c.delete(filter={"i": {"$lt": 1000}}) == 1000  # more than a fifth dead: rebuilt at the next search
        hits = c.search(vector=keys[1500], encoder=ENCODER, k=3)
        assert hits[0].id == "1500"
        assert all(int(h.id) >= 1000 for h in hits)
        assert [h.id for h in c.search(vector=keys[1500], encoder=ENCODER, k=3, filter={"i": 1501})] == ["1501"]


def test_split_uri():
    assert split_uri("milvus://127.0.0.1:19530/docs") == ("milvus://127.0.0.1:19530", "docs")
    assert split_uri("some/folder") == ("some/folder", None)
    with pytest.raises(UserError) as err:
        split_uri("milvus://localhost/docs")
    assert err.value.message == "milvus://localhost/docs: a Milvus URI needs a host and a port"
