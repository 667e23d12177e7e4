"""``llm-embedder index`` / ``search`` into a folder and into Milvus (same exact top-10), and the index drills: one
writer per index, dtype/backend recorded and checked, a corpus edited after indexing, a 50 MB field."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.cli.main import main
from llm_embedder.errors import UserError
from llm_embedder.model.truncation import CHARS_PER_TOKEN, clip_chars
from llm_embedder.retrieval.dense import build_index_folder
from llm_embedder.retrieval.folder import read_manifest
from llm_embedder.utils.files import exclusive_lock


@pytest.fixture()
def shared_encoder(monkeypatch, embedder):
    """The CLI's encoder loads are served by the session's encoder (same weights; saves CPU time)."""
    import llm_embedder.model.embedder as embedder_module

    monkeypatch.setattr(embedder_module, "LLMEmbedder", lambda model=None, **kwargs: embedder)
    return embedder


def small_corpus(data_dir: Path, path: Path, n: int) -> list[dict]:
    with open(data_dir / "tasks" / "qa" / "corpus.jsonl", encoding="utf-8") as source:
        path.write_text("".join(next(source) for _ in range(n)), encoding="utf-8")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_and_milvus_give_the_same_exact_top10(tmp_path, data_dir, milvus_server, shared_encoder, capsys):
    corpus = tmp_path / "corpus.jsonl"
    rows = small_corpus(data_dir, corpus, 80)
    queries = tmp_path / "q.jsonl"
    with open(data_dir / "tasks" / "qa" / "dev.jsonl", encoding="utf-8") as dev:
        lines = [json.loads(next(dev)) for _ in range(6)]
    queries.write_text("".join(json.dumps({"query": r["query"], "query_id": i}) + "\n" for i, r in enumerate(lines)))
    collection = "qa_" + uuid.uuid4().hex[:8]
    targets = [str(tmp_path / "idx"), f"{milvus_server.uri}/{collection}"]
    results = []
    for target in targets:
        assert main(["index", "--task", "qa", str(corpus), "-o", target, "--no-progress"]) == 0
        out = tmp_path / f"hits-{len(results)}.jsonl"
        assert main(["search", target, "--queries", str(queries), "-o", str(out)]) == 0
        hits = [json.loads(line)["hits"] for line in out.read_text().splitlines()]
        results.append([[h["row"] for h in q] for q in hits])
        assert hits[0][0]["title"] == rows[hits[0][0]["row"]]["title"]  # the corpus row's fields come along
        np.testing.assert_allclose(
            [h["score"] for h in hits[0]],
            np.sort(
                shared_encoder.encode_keys([f"{r['title']} {r['text']}" for r in rows], task="qa")
                @ shared_encoder.encode_queries([lines[0]["query"]], task="qa")[0]
            )[::-1][:10],
            atol=1e-5,
        )
    assert results[0] == results[1]
    assert all(len(r) == 10 for r in results[0])
    capsys.readouterr()
    # a rerun resumes (nothing left to do); another corpus into the same collection is refused
    assert main(["index", "--task", "qa", str(corpus), "-o", targets[1], "--no-progress"]) == 0
    assert f"collection '{collection}' is up to date (80 rows)" in capsys.readouterr().out
    other = tmp_path / "other.jsonl"
    small_corpus(data_dir, other, 5)
    assert main(["index", "--task", "qa", str(other), "-o", targets[1], "--no-progress"]) == 2
    assert f"collection '{collection}' in {milvus_server.uri} was built from another corpus" in capsys.readouterr().err
    assert main(["search", targets[1], "hamlet", "--retriever", "bm25", "-k", "3"]) == 0
    assert main(["search", f"{milvus_server.uri}/nope", "hamlet"]) == 2
    assert f"no collection 'nope' in {milvus_server.uri}" in capsys.readouterr().err


def test_second_index_writer_is_refused(tmp_path, data_dir, capsys):
    corpus = tmp_path / "corpus.jsonl"
    small_corpus(data_dir, corpus, 5)
    target = tmp_path / "idx"
    with exclusive_lock(target, what="index"):
        code = main(["index", "--task", "qa", str(corpus), "-o", str(target), "--index-type", "none", "--bm25"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llm-embedder index: error: {target}: another run (pid ") and "is writing this index" in err
    assert not target.exists()


class _Encoder:
    """A tiny stand-in encoder with a dtype/backend, for the update checks."""

    source = "fake"
    dim = 8
    batch_size = 8
    use_instructions = False
    query_max_length = key_max_length = 32

    def __init__(self, dtype: str = "fp32", backend: str = "torch") -> None:
        from llm_embedder.tasks.registry import TASKS

        self.tasks = TASKS
        self.dtype = dtype
        self.backend = backend

    def task(self, name):
        return self.tasks.get(name)

    def instruction(self, task, side):
        return ""

    def encode_keys(self, texts, task="qa", batch_size=None, show_progress_bar=None):
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_dtype_and_backend_are_recorded_and_an_update_with_others_is_refused(tmp_path, data_dir):
    corpus = tmp_path / "corpus.jsonl"
    small_corpus(data_dir, corpus, 6)
    target = tmp_path / "idx"
    build_index_folder(corpus, target, embedder=_Encoder(), task="qa", show_progress=False, log=lambda _: None)
    encoder = read_manifest(target)["encoder"]
    assert (encoder["dtype"], encoder["backend"]) == ("fp32", "torch")
    with open(corpus, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"title": "new", "text": "appended row"}) + "\n")
    for kwargs, message in (
        ({"dtype": "bf16"}, "the index was built with dtype 'fp32', now 'bf16'"),
        ({"backend": "onnx"}, "the index was built with backend 'torch', now 'onnx'"),
    ):
        with pytest.raises(UserError) as err:
            build_index_folder(
                corpus, target, embedder=_Encoder(**kwargs), task="qa", mode="update", show_progress=False
            )
        assert err.value.message == message
    manifest = build_index_folder(
        corpus, target, embedder=_Encoder(), task="qa", mode="update", show_progress=False, log=lambda _: None
    )
    assert manifest["count"] == 7


def test_corpus_edited_after_indexing_is_one_line(tmp_path, data_dir, capsys):
    corpus = tmp_path / "corpus.jsonl"
    small_corpus(data_dir, corpus, 8)
    target = tmp_path / "idx"
    assert main(["index", "--task", "qa", str(corpus), "-o", str(target), "--index-type", "none", "--bm25"]) == 0
    sha = read_manifest(target)["corpus"]["sha256"]
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus.write_text("".join([lines[1], lines[0], *lines[2:]]), encoding="utf-8")  # same size, rows moved
    capsys.readouterr()
    assert main(["search", str(target), "the", "--retriever", "bm25"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llm-embedder search: error: {corpus}: corpus changed since indexing (checksum ")
    assert f"indexed {sha[:16]})" in err and "\n" not in err


def test_huge_field_is_cut_by_characters_before_tokenization(embedder):
    assert clip_chars(["abcdef", "ab"], 1) == ["abcdef", "ab"]
    long = "x" * (3 * CHARS_PER_TOKEN)
    assert clip_chars([long], 2) == [long[: 2 * CHARS_PER_TOKEN]]
    assert clip_chars(["a" + long], 2, tail=True) == [long[-2 * CHARS_PER_TOKEN :]]
    huge = "retrieval augmented language models " * 300_000  # ~11 MB
    limit = embedder.key_max_length * CHARS_PER_TOKEN
    np.testing.assert_array_equal(
        embedder.encode_keys([huge], task="qa"), embedder.encode_keys([huge[:limit]], task="qa")
    )
