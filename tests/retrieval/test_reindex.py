"""``reindex_collection`` on both store backends: every document re-encoded once, scopes and metadata kept, and every
state a kill can leave behind finished by a rerun (or refused, when only another model can finish it)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.errors import EXIT_USER_ERROR, UserError
from llm_embedder.retrieval.store import open_store
from llm_embedder.retrieval.store.base import CollectionInfo, Document
from llm_embedder.retrieval.store.reindex import STAGING_SUFFIX, reindex_collection


class FakeEmbedder:
    """Deterministic unit vectors from (name, text): two names are two encoders."""

    def __init__(self, name: str, dim: int = 8) -> None:
        self.name, self.dim = name, dim
        self.fingerprint = f"{name}|dim={dim}"
        self.encoded = 0

    def encode(self, texts, *, task, side, show_progress_bar=False):
        assert side == "key"
        self.encoded += len(texts)
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(f"{self.name}|{task}|{text}".encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).normal(size=self.dim))
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


OLD, NEW, OTHER = FakeEmbedder("old"), FakeEmbedder("new", dim=12), FakeEmbedder("other")
SCOPES = {"": 40, "conv-a": 25, "conv-b": 30}


@pytest.fixture(params=["embedded", "milvus"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    uri = request.getfixturevalue("milvus_server").uri if request.param == "milvus" else str(tmp_path / "store")
    opened = open_store(uri)
    yield opened
    opened.close()


def _fill(store, name: str) -> dict[tuple[str, str], Document]:
    collection = store.create_collection(CollectionInfo(name, "qa", OLD.fingerprint, OLD.dim))
    written = {}
    for scope, n in SCOPES.items():
        docs = [Document(f"d{i}", f"text {scope} {i}", title=f"title {i}", metadata={"i": i}) for i in range(n)]
        keys = [f"{d.title} {d.text}" for d in docs]
        collection.upsert(docs, OLD.encode(keys, task="qa", side="key"), encoder=OLD.fingerprint, scope=scope)
        written.update({(scope, d.id): d for d in docs})
    return written


def _check(store, name: str, written: dict, embedder: FakeEmbedder) -> None:
    names = {info.name: info for info in store.list_collections()}
    assert name + STAGING_SUFFIX not in names
    assert (names[name].encoder, names[name].dim, names[name].task) == (embedder.fingerprint, embedder.dim, "qa")
    seen = {}
    for scope, docs, vectors in store.collection(name).scan(batch_size=16):
        for doc, vector in zip(docs, vectors, strict=True):
            seen[(scope, doc.id)] = doc
            # the key as the task renders it ("{title} {text}"), encoded by the new encoder
            expected = embedder.encode([f"{doc.title} {doc.text}"], task="qa", side="key")[0]
            np.testing.assert_allclose(vector, expected, atol=1e-5)
    assert seen == written
    # a tenant still sees only its own documents
    assert store.collection(name).count(scope="conv-a") == SCOPES["conv-a"]


def _name() -> str:
    return "r_" + uuid.uuid4().hex[:10]


def test_reindex_encodes_every_document_once_and_keeps_scopes(store):
    name = _name()
    written = _fill(store, name)
    new = FakeEmbedder("new", dim=12)
    result = reindex_collection(store, name, new, batch_size=16)
    assert (result.documents, result.changed, result.old_encoder) == (95, True, OLD.fingerprint)
    assert new.encoded == 95
    _check(store, name, written, new)
    new.encoded = 0
    again = reindex_collection(store, name, new)
    assert (again.changed, again.documents, new.encoded) == (False, 95, 0)
    store.drop_collection(name)


def test_a_rerun_finishes_what_a_kill_left(store):
    name = _name()
    written = _fill(store, name)
    staging = name + STAGING_SUFFIX
    # killed in phase 1: NAME whole with the old encoder, a partial copy beside it
    partial = store.create_collection(CollectionInfo(staging, "qa", NEW.fingerprint, NEW.dim))
    partial.upsert([Document("d0", "stale")], NEW.encode(["stale"], task="qa", side="key"), encoder=NEW.fingerprint)
    reindex_collection(store, name, NEW)
    _check(store, name, written, NEW)

    # killed in phase 2: the copy whole, NAME rebuilt half-way (or dropped)
    reindex_collection(store, name, OTHER)  # back to another encoder, then interrupt the way to NEW by hand
    reindex_collection(store, name, NEW)
    copy = store.create_collection(CollectionInfo(staging, "qa", NEW.fingerprint, NEW.dim))
    for scope, docs, vectors in store.collection(name).scan():
        copy.upsert(docs, vectors, encoder=NEW.fingerprint, scope=scope)
    store.collection(name).delete(scope="conv-b", filter={"i": {"$gte": 5}})  # NAME half rebuilt
    result = reindex_collection(store, name, NEW)
    assert result.changed and result.documents == 95
    _check(store, name, written, NEW)
    copy = store.create_collection(CollectionInfo(staging, "qa", NEW.fingerprint, NEW.dim))
    for scope, docs, vectors in store.collection(name).scan():
        copy.upsert(docs, vectors, encoder=NEW.fingerprint, scope=scope)
    store.drop_collection(name)  # killed right after phase 1's drop
    assert reindex_collection(store, name, NEW).old_encoder == ""
    _check(store, name, written, NEW)

    # only the model of an interrupted phase 2 can finish it
    copy = store.create_collection(CollectionInfo(staging, "qa", NEW.fingerprint, NEW.dim))
    for scope, docs, vectors in store.collection(name).scan():
        copy.upsert(docs, vectors, encoder=NEW.fingerprint, scope=scope)
    store.drop_collection(name)
    with pytest.raises(UserError, match=r"interrupted reindex of 'r_\w+' to new\|dim=12 must be finished first"):
        reindex_collection(store, name, OTHER)
    reindex_collection(store, name, NEW)
    _check(store, name, written, NEW)
    store.drop_collection(name)


def test_unknown_collection_is_one_line(store):
    with pytest.raises(UserError, match=r"^no collection 'nope_x' in "):
        reindex_collection(store, "nope_x", NEW)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from llm_embedder.cli.main import main

    cases = [
        ([], "give --data-dir (or --store)"),
        (["--data-dir", str(tmp_path)], f"{tmp_path / 'store'} is not a store (no store.sqlite)"),
        (["--store", str(tmp_path / "typo")], f"{tmp_path / 'typo'} is not a store (no store.sqlite)"),
        (["--store", str(tmp_path), "--batch-size", "0"], "--batch-size must be positive, got 0"),
    ]
    for args, message in cases:
        assert main(["reindex", *args]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "typo").exists()


def test_reindex_is_refused_while_a_server_holds_the_folder(tmp_path, capsys):
    """A running server's acknowledged writes would be lost in the rebuild: reindex waits for none, it refuses."""
    from llm_embedder.cli.main import main
    from llm_embedder.serving.service import hold_data_dir

    data = tmp_path / "data"
    store = open_store(str(data / "store"))
    store.create_collection(CollectionInfo("kb", "qa", "old", 4))
    store.close()
    with hold_data_dir(data):
        assert main(["reindex", "--data-dir", str(data), "--model", "default"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "this data folder is in use by another llm-embedder process (a server or a reindex)" in err
    assert err.count("\n") == 1


def test_a_short_copy_drops_nothing(tmp_path, monkeypatch):
    """If the staging copy comes out short, the original stays whole and the error says so (embedded store)."""
    from llm_embedder.retrieval.store.embedded import EmbeddedCollection

    store = open_store(str(tmp_path / "store"))
    written = _fill(store, "kb")
    upsert = EmbeddedCollection.upsert

    def lossy(self, documents, vectors, **kwargs):  # a backend that loses the last document of every write
        return upsert(self, documents[:-1], vectors[:-1], **kwargs)

    monkeypatch.setattr(EmbeddedCollection, "upsert", lossy)
    with pytest.raises(UserError, match=r"^copying kb to kb__reindex gave \d+ documents instead of 95 \(nothing was"):
        reindex_collection(store, "kb", NEW, batch_size=16)
    monkeypatch.setattr(EmbeddedCollection, "upsert", upsert)
    infos = {info.name: info for info in store.list_collections()}
    assert infos["kb"].encoder == OLD.fingerprint and store.collection("kb").count(scope=None) == 95
    reindex_collection(store, "kb", NEW)  # the rerun finishes
    _check(store, "kb", written, NEW)
    store.close()
