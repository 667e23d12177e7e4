"""Name -> retriever, once for the whole project (evaluation, the negatives builder, ``llm-embedder search`` and the
server all call this module).

* :func:`build_retriever`: the spec strings of ``eval`` / ``build negatives`` - ``none``, ``random``, ``recency``,
  ``bm25``, ``hybrid[:ENCODER]``, an encoder (``default``, a folder, a hub id), an index folder or a store URI -
  optionally labelled ``LABEL=SPEC``; the classes live in :mod:`llm_embedder.retrieval.baselines`;
* :func:`corpus_retriever`: the same names as a :class:`Retriever` over one corpus (built once);
* :func:`open_index`: an index target - a folder written by ``llm-embedder index`` or a store URI
  ``milvus://HOST:PORT/COLLECTION`` - opened for search by corpus row, with the query encoder it recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import Retriever
from llm_embedder.retrieval.baselines import (
    BM25Retrieval,
    EmbedderRetrieval,
    HybridRetrieval,
    IndexRetrieval,
    NoRetrieval,
    PoolRetriever,
    RandomRetrieval,
    RecencyRetrieval,
)

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
    rows: Any  # .get(list[int]) -> list[dict], see retrieval.corpus_file.CorpusRows
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
    from llm_embedder.retrieval.folder import read_manifest

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

    from llm_embedder.retrieval.corpus_file import CorpusRows

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
    from llm_embedder.retrieval.corpus_file import CorpusRows, scan_corpus

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


# ---------------------------------------------------------------------------------------------------- spec strings
EmbedderLoader = Callable[[str], Any]

#: names that are baselines, not embedder folders
BASELINES = ("none", "random", "recency", "bm25", "hybrid")


def parse_retriever_spec(spec: str) -> tuple[str, str]:
    """``"label=spec"`` -> ``(label, spec)``; a bare spec is its own label."""
    spec = spec.strip()
    if not spec:
        raise UserError(
            "empty retriever name", hint=f"use one of {', '.join(BASELINES)}, default, or an encoder folder"
        )
    label, sep, rest = spec.partition("=")
    if sep and label and rest and "/" not in label and not Path(spec).exists():
        return label.strip(), rest.strip()
    return spec, spec


def build_retriever(
    spec: str,
    *,
    seed: int = 0,
    load_embedder: EmbedderLoader | None = None,
    index_options: dict[str, Any] | None = None,
) -> PoolRetriever:
    """The retriever a spec string names: ``none``, ``random``, ``recency``, ``bm25``, ``hybrid[:ENCODER]``, an index
    folder or store URI (``index_options`` go to :func:`open_index`), or an encoder (``default``, folder, hub id).

    ``load_embedder(path_or_id)`` loads an encoder; the default makes an :class:`LLMEmbedder` (one-line error
    when the folder or hub id cannot be found). Pass a caching loader to share encoders between retrievers.
    """
    label, name = parse_retriever_spec(spec)
    if load_embedder is None:
        load_embedder = _load_embedder
    if is_index_target(name):
        return IndexRetrieval(label, name, **(index_options or {}))
    if name == "none":
        return NoRetrieval(label)
    if name == "random":
        return RandomRetrieval(label, seed=seed)
    if name == "recency":
        return RecencyRetrieval(label)
    if name == "bm25":
        return BM25Retrieval(label)
    if name == "hybrid" or name.startswith("hybrid:"):
        encoder = name.partition(":")[2] or "default"
        return HybridRetrieval(label, [BM25Retrieval("bm25"), EmbedderRetrieval(encoder, load_embedder(encoder))])
    return EmbedderRetrieval(label, load_embedder(name))


def _load_embedder(name: str) -> Any:
    from llm_embedder.model.embedder import LLMEmbedder

    return LLMEmbedder(None if name == "default" else name)


def caching_loader(**embedder_kwargs: Any) -> EmbedderLoader:
    """An embedder loader that loads each encoder once (``default`` and ``hybrid`` then share one MiniLM)."""
    cache: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in cache:
            from llm_embedder.model.embedder import LLMEmbedder

            cache[name] = LLMEmbedder(None if name == "default" else name, **embedder_kwargs)
        return cache[name]

    return load


def corpus_retriever(
    spec: str, keys: Sequence[str], *, task: str, device: str | None = None, batch_size: int | None = None
) -> Retriever:
    """A :class:`Retriever` over the corpus ``keys`` from a spec string (an index must cover exactly these rows)."""
    options = {k: v for k, v in {"device": device, "batch_size": batch_size}.items() if v is not None}
    retriever = build_retriever(spec, load_embedder=caching_loader(**options), index_options=options)
    return retriever.corpus_retriever(list(keys), task=task)
