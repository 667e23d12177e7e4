"""Document stores behind one contract (:mod:`llm_embedder.retrieval.store.base`): the embedded folder store (SQLite +
faiss + bm25s, the default) and Milvus (``milvus://HOST:PORT``). :func:`open_store` picks one from a URI."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from llm_embedder.errors import UserError
from llm_embedder.retrieval.store.base import (
    DEFAULT_SCOPE,
    SEARCH_MODES,
    Collection,
    CollectionInfo,
    Document,
    Filter,
    Hit,
    SearchMode,
    Store,
)

__all__ = [
    "DEFAULT_SCOPE",
    "SEARCH_MODES",
    "Collection",
    "CollectionInfo",
    "Document",
    "Filter",
    "Hit",
    "SearchMode",
    "Store",
    "open_store",
    "split_uri",
]

MILVUS_SCHEME = "milvus://"


def split_uri(uri: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``(store URI, collection or None)``: ``milvus://HOST:PORT/NAME`` -> (``milvus://HOST:PORT``, ``NAME``);
    a folder path is returned as it is (the collection is chosen by the caller)."""
    text = os.fspath(uri)
    if not text.startswith(MILVUS_SCHEME):
        return text, None
    parts = urlsplit(text)
    if not parts.hostname or parts.port is None:
        raise UserError(f"{text}: a Milvus URI needs a host and a port", hint="e.g. milvus://127.0.0.1:19530/docs")
    name = parts.path.strip("/") or None
    if name is not None and "/" in name:
        raise UserError(f"{text}: one collection name after the port, got {name!r}")
    return f"{MILVUS_SCHEME}{parts.hostname}:{parts.port}", name


def open_store(uri: str | os.PathLike[str], **options: object) -> Store:
    """Open the store at ``uri``: ``milvus://HOST:PORT`` (pymilvus, optional extra ``milvus``) or a folder path
    (the embedded store, created on first write)."""
    base, _ = split_uri(uri)
    if base.startswith(MILVUS_SCHEME):
        from llm_embedder.retrieval.store.milvus import MilvusStore

        return MilvusStore(base, **options)  # type: ignore[arg-type]
    if "://" in base:
        raise UserError(f"unknown store URI {base!r}", hint="use a folder path or milvus://HOST:PORT")
    from llm_embedder.retrieval.store.embedded import EmbeddedStore

    return EmbeddedStore(base, **options)  # type: ignore[arg-type]
