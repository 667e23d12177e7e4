"""Name -> retriever, once for the whole project (evaluation, the negatives builder, ``llm-embedder search`` and the
server all call this module).

* :func:`open_index`: an index target - a folder written by ``llm-embedder index`` or a store URI
  ``milvus://HOST:PORT/COLLECTION`` - opened for search by corpus row, with the query encoder it recorded;
* :func:`build_retriever` (in :mod:`llm_embedder.evaluation.retrievers`, which re-exports the baselines): the spec
  strings of ``eval`` / ``build negatives`` (``none``, ``random``, ``recency``, ``bm25``, ``hybrid``, an encoder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import Retriever

#: what part of an index a search uses
INDEX_KINDS = ("auto", "dense", "bm25", "hybrid")


def is_index_target(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names an index (a store URI or a folder with an index manifest), not an encoder."""
    text = os.fspath(spec)
    return text.startswith("milvus://") or (Path(text) / "manifest.json").is_file()


@dataclass
class OpenedIndex:
    """A searchable index: the retriever (hits are corpus rows) and the reader of those rows' fields."""

    retriever: Retriever
    rows: Any  # .get(list[int]) -> list[dict], see retrieval.index.CorpusRows
    task: str


def open_index(
    target: str | os.PathLike[str],
    *,
    kind: str = "auto",
    model: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    corpus: str | None = None,
    mmap: bool = True,
    ef_search: int | None = None,
    nprobe: int | None = None,
    rerank: int | None = None,
) -> OpenedIndex:
    """Open ``target`` for search; ``kind`` picks dense / bm25 / hybrid (auto: dense when the index has it)."""
    if kind not in INDEX_KINDS:
        raise UserError(f"unknown retriever {kind!r} for an index", hint=f"choose {', '.join(INDEX_KINDS)}")
    text = os.fspath(target)
    if text.startswith("milvus://"):
        return _open_store_collection(text, kind=kind, model=model, device=device, batch_size=batch_size, corpus=corpus)
    return _open_folder(
        text,
        kind=kind,
        model=model,
        device=device,
        batch_size=batch_size,
        corpus=corpus,
        mmap=mmap,
        ef_search=ef_search,
        nprobe=nprobe,
        rerank=rerank,
    )


def _open_folder(
    folder: str,
    *,
    kind: str,
    model: str | None,
    device: str | None,
    batch_size: int | None,
    corpus: str | None,
    mmap: bool,
    ef_search: int | None,
    nprobe: int | None,
    rerank: int | None,
) -> OpenedIndex:
    from llm_embedder.retrieval.index import read_manifest

    manifest = read_manifest(folder)
    has_dense, has_bm25 = bool(manifest.get("dense")), bool(manifest.get("bm25"))
    if kind == "auto":
        kind = "dense" if has_dense else "bm25"
    if kind in ("dense", "hybrid") and not has_dense:
        raise UserError(f"{folder} holds no dense index", hint="use --retriever bm25")
    if kind in ("bm25", "hybrid") and not has_bm25:
        raise UserError(f"{folder} holds no BM25 index", hint="rebuild it with `llm-embedder index --bm25`")
    parts: list[Retriever] = []
    if kind in ("dense", "hybrid"):
        from llm_embedder.retrieval.dense import DenseRetriever, embedder_from_manifest
        from llm_embedder.retrieval.index import DenseIndex

        index = DenseIndex.load(folder, mmap=mmap)
        index.set_search_params(ef_search=ef_search, nprobe=nprobe, rerank=rerank)
        embedder = embedder_from_manifest(manifest, model=model, device=device, batch_size=batch_size)
        parts.append(DenseRetriever(embedder, manifest["encoder"]["task"], index=index))
    if kind in ("bm25", "hybrid"):
        from llm_embedder.retrieval.bm25 import BM25Retriever

        parts.append(BM25Retriever.load(folder, mmap=mmap))
    retriever: Retriever = parts[0]
    if kind == "hybrid":
        from llm_embedder.retrieval.hybrid import HybridRetriever

        retriever = HybridRetriever(parts)
    task = str((manifest.get("encoder") or {}).get("task") or "")
    return OpenedIndex(retriever, _folder_rows(folder, manifest, corpus), task)


def _folder_rows(folder: str, manifest: dict[str, Any], corpus: str | None) -> Any:
    import numpy as np

    from llm_embedder.retrieval.index import CorpusRows

    recorded = manifest.get("corpus") or {}
    path = corpus or recorded.get("path")
    if not path:
        raise UserError(f"{folder}: the manifest does not name its corpus", hint="pass --corpus")
    offsets = np.load(Path(folder) / recorded.get("offsets", "offsets.npy"), mmap_mode="r")
    return CorpusRows(path, offsets, None if corpus else recorded)


def _open_store_collection(
    uri: str, *, kind: str, model: str | None, device: str | None, batch_size: int | None, corpus: str | None
) -> OpenedIndex:
    from llm_embedder.retrieval.dense import embedder_from_manifest
    from llm_embedder.retrieval.store import open_store, split_uri
    from llm_embedder.retrieval.store.corpus import CollectionRetriever

    base, name = split_uri(uri)
    if name is None:
        raise UserError(f"{uri}: name the collection", hint="e.g. milvus://127.0.0.1:19530/docs")
    store = open_store(base)
    collection = store.collection(name)
    info = collection.info
    mode = "dense" if kind == "auto" else kind
    embedder = None
    if mode != "bm25":
        encoder = info.extra.get("encoder")
        if not encoder:
            raise UserError(f"{uri}: the collection does not record its encoder", hint="rebuild it with `index`")
        embedder = embedder_from_manifest({"encoder": encoder}, model=model, device=device, batch_size=batch_size)
    retriever = CollectionRetriever(collection, mode=mode, embedder=embedder, name=mode)  # type: ignore[arg-type]
    return OpenedIndex(retriever, _recorded_corpus_rows(uri, info.extra.get("corpus") or {}, corpus), info.task)


def _recorded_corpus_rows(uri: str, recorded: dict[str, Any], corpus: str | None) -> Any:
    """Rows of the corpus a collection was built from (scanned once: a store keeps no byte offsets)."""
    from llm_embedder.retrieval.index import CorpusRows, scan_corpus

    path = corpus or recorded.get("path")
    if not path or not Path(path).is_file():
        raise UserError(f"{uri}: corpus {path} (recorded in the collection) not found", hint="pass --corpus")
    scan = scan_corpus(path)
    if corpus is None and recorded.get("sha256") and scan.sha256 != recorded["sha256"]:
        raise UserError(
            f"{path}: corpus changed since indexing (checksum {scan.sha256[:16]}, indexed {recorded['sha256'][:16]})",
            hint="rebuild the collection (`llm-embedder index --overwrite`), or pass --corpus with the indexed file",
        )
    return CorpusRows(path, scan.offsets)
