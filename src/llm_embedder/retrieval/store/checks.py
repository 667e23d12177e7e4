"""The contract's checks, shared by every store backend: names, scopes, documents, vectors, search arguments and the
stored collection record. One place, so the embedded store and Milvus refuse the same input with the same line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.store.base import SEARCH_MODES, CollectionInfo, Document, Filter
from llm_embedder.retrieval.store.filters import FIELD_NAME, validate_metadata


def check_name(name: str) -> str:
    """Collection names are identifiers (the same rule as Milvus), so a name never becomes a path or an injection."""
    if not isinstance(name, str) or not FIELD_NAME.match(name) or len(name) > 255:
        raise UserError(f"collection name {name!r} is not an identifier", hint="use letters, digits and underscores")
    return name


def check_scope(scope: Any) -> str:
    if not isinstance(scope, str):
        raise UserError(f"scope must be a string, got {type(scope).__name__}")
    return scope


def check_vectors(info: CollectionInfo, vectors: Any, encoder: str | None, n: int | None, what: str) -> np.ndarray:
    """The contract's checks on vectors, shared by every backend: encoder, shape, finite, unit length."""
    if encoder != info.encoder:
        raise UserError(
            f"collection {info.name!r} holds vectors of encoder {info.encoder!r}; {what} came from {encoder!r}",
            hint="encode with the collection's encoder, or create another collection",
        )
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != info.dim or (n is not None and array.shape[0] != n):
        raise UserError(
            f"collection {info.name!r} expects {'' if n is None else f'{n} '}vectors of dimension {info.dim}, "
            f"{what} have shape {tuple(array.shape)}"
        )
    if not np.isfinite(array).all():
        raise UserError(f"{what} contain NaN or inf values", hint="check the encoder's output")
    norms = np.linalg.norm(array, axis=1)
    if len(norms) and np.abs(norms - 1.0).max() > 1e-3:
        raise UserError(f"{what} are not L2-normalised", hint="normalise them (LLMEmbedder does)")
    return np.ascontiguousarray(array)


def check_documents(documents: Sequence[Document]) -> list[Document]:
    seen: set[str] = set()
    out = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise UserError(f"document {i} is a {type(doc).__name__}, expected a Document")
        if not isinstance(doc.id, str) or not doc.id:
            raise UserError(f"document {i}: id must be a non-empty string, got {doc.id!r}")
        if doc.id in seen:
            raise UserError(f"document id {doc.id!r} appears twice in one upsert", hint="send each id once")
        seen.add(doc.id)
        if not isinstance(doc.text, str) or not isinstance(doc.title, str):
            raise UserError(f"document {doc.id!r}: text and title must be strings")
        validate_metadata(doc.metadata, f"document {doc.id!r}")
        out.append(doc)
    return out


def check_search_args(
    info: CollectionInfo, mode: str, vector: Any, text: Any, encoder: str | None, k: int
) -> np.ndarray | None:
    if mode not in SEARCH_MODES:
        raise UserError(f"unknown search mode {mode!r}", hint=f"choose {', '.join(SEARCH_MODES)}")
    if int(k) <= 0:
        raise UserError(f"k must be positive, got {k}")
    if mode in ("dense", "hybrid") and vector is None:
        raise UserError(f"{mode} search needs a query vector")
    if mode in ("bm25", "hybrid") and not isinstance(text, str):
        raise UserError(f"{mode} search needs a query text")
    if mode in ("dense", "hybrid"):
        return check_vectors(info, vector, encoder, None, "query vectors")
    return None


def check_delete_selector(ids: Sequence[str] | None, filter: Filter | None) -> None:
    if not ids and not filter:
        raise UserError(
            "delete needs ids or a filter", hint="an empty selector would delete the whole scope; name what to delete"
        )


def info_to_json(info: CollectionInfo) -> str:
    return json.dumps(asdict(info), sort_keys=True)


def info_from_json(text: str) -> CollectionInfo:
    try:
        raw = json.loads(text)
        known = set(CollectionInfo.__dataclass_fields__)
        return CollectionInfo(**{k: v for k, v in raw.items() if k in known})
    except (json.JSONDecodeError, TypeError, AttributeError):
        raise UserError(f"unreadable collection record {text[:80]!r}", hint="the store was not written by us") from None


def same_settings(a: CollectionInfo, b: CollectionInfo) -> bool:
    return (a.task, a.encoder, a.dim, a.index) == (b.task, b.encoder, b.dim, b.index)


def check_search_batch(
    info: CollectionInfo,
    mode: str,
    vectors: Any,
    texts: Sequence[str] | None,
    encoder: str | None,
    k: int,
    scope: Any,
) -> tuple[str, np.ndarray | None]:
    """``(scope, query vectors or None)`` for a batch search, after every check of :func:`check_search_args`."""
    scope = check_scope(scope)
    if mode in ("bm25", "hybrid") and (texts is None or isinstance(texts, str)):
        raise UserError(f"{mode} search needs query texts")
    for text in texts or []:
        if not isinstance(text, str):
            raise UserError(f"query texts must be strings, got {type(text).__name__}")
    first_text = (texts or [""])[0] if mode != "dense" else None
    return scope, check_search_args(info, mode, vectors, first_text, encoder, k)
