"""The document store contract: what every backend (the embedded faiss + bm25s folder, Milvus) promises.

A *store* holds named *collections*. A collection is bound, when it is created, to one task of the task table and
to one encoder (its fingerprint and dimension); it refuses vectors from any other encoder, because vectors of two
encoders are not comparable and mixing them silently ruins every search.

Documents live in *scopes*. A scope is a string chosen by the caller (a conversation id, a tenant, a user) or the
default scope ``""``. Scoping is enforced by the store itself, not by the caller: every read and every delete takes
exactly one scope and can never see or touch documents of another scope, and a document id is unique only within its
scope (the same id in two scopes names two documents). A delete must name ids or a filter; an empty selector is
refused, so a bug in a caller can never wipe a collection.

Filters (:data:`Filter`) are one small language with the same meaning on every backend (the contract test suite runs
each case against every backend): a mapping from a metadata field to a condition, all conditions ANDed:

* ``{"lang": "en"}`` - equal (strings, integers, booleans; floats compare exactly);
* ``{"year": {"$gte": 2020, "$lt": 2024}}`` - ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte`` (numbers only for
  the order operators);
* ``{"tag": {"$in": ["a", "b"]}}`` / ``{"$nin": [...]}`` - one of / none of (a non-empty list of scalars).

A document whose metadata lacks the field never matches a condition on it (``$ne`` and ``$nin`` included). Metadata
values are JSON scalars or lists of scalars; field names are identifiers (``[A-Za-z_][A-Za-z0-9_]*``).

Search modes: ``dense`` (cosine on the stored L2-normalised vectors; exact unless the collection was created with an
approximate index), ``bm25`` (over ``title + " " + text``) and ``hybrid`` (reciprocal-rank fusion of the two, see
:func:`llm_embedder.retrieval.fusion.reciprocal_rank_fusion`). Ties are broken by insertion order, then id, so the same
data gives the same hits on every backend.

Durability: when ``upsert`` or ``delete`` returns, the change survives a kill -9 of the process; a write interrupted
before it returns is either wholly applied or not at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llm_embedder.data.corpus import render_key

#: metadata condition language, see the module docstring
Filter = Mapping[str, Any]
SearchMode = Literal["dense", "bm25", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")
#: the scope of documents written without one
DEFAULT_SCOPE = ""


@dataclass(frozen=True)
class Document:
    """One stored item: a passage, a memory turn, a text chunk, a demonstration, a tool description.

    ``text`` (and ``title``) are what BM25 reads; the vector stored with it was encoded from :meth:`key`, the
    collection task's key, which is also what an augmented prompt shows. ``metadata`` is free JSON (scalars or
    lists of scalars per field).
    """

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def key(self, key_template: str, *, where: str = "") -> str:
        """The text the embedder encodes for this document: ``key_template`` (the collection task's) filled with
        ``title`` and ``text`` by the one key rule of eval and training (:func:`llm_embedder.data.corpus.render_key`),
        so a served document, a re-indexed one and a training record's candidate are the same string."""
        return render_key(key_template, {"title": self.title, "text": self.text}, where=where)


@dataclass(frozen=True)
class Hit:
    """A search result: the document and its score (higher is better; cosine for dense, BM25 or RRF otherwise)."""

    document: Document
    score: float

    @property
    def id(self) -> str:
        return self.document.id


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection was created with; stored with it and checked on every write and query vector."""

    name: str
    task: str
    encoder: str  # encoder fingerprint (model identity + instruction use + pooling), see LLMEmbedder.fingerprint
    dim: int
    index: str = "flat"  # "flat" (exact) or a backend's approximate index name (e.g. "hnsw")
    extra: dict[str, Any] = field(default_factory=dict)


class Collection(ABC):
    """One collection of a store. Every method that reads or deletes takes exactly one ``scope``."""

    info: CollectionInfo

    @abstractmethod
    def upsert(
        self, documents: Sequence[Document], vectors: np.ndarray, *, encoder: str, scope: str = DEFAULT_SCOPE
    ) -> list[str]:
        """Insert or replace ``documents`` (same id in the same scope replaces) with their key ``vectors``.

        ``vectors`` is float32 ``(len(documents), dim)``, L2-normalised, finite; ``encoder`` must equal
        ``info.encoder``. Returns the ids in input order. Durable when it returns.
        """

    @abstractmethod
    def delete(
        self, *, scope: str = DEFAULT_SCOPE, ids: Sequence[str] | None = None, filter: Filter | None = None
    ) -> int:
        """Delete the documents of ``scope`` with these ids and/or matching ``filter``; returns how many went.

        Neither ids nor filter (or an empty list / mapping) is refused with a :class:`UserError`.
        """

    @abstractmethod
    def get(self, ids: Sequence[str], *, scope: str = DEFAULT_SCOPE) -> list[Document | None]:
        """The documents with these ids in ``scope`` (``None`` where absent), in input order."""

    @abstractmethod
    def count(self, *, scope: str | None = DEFAULT_SCOPE) -> int:
        """Documents in ``scope``; ``scope=None`` counts every scope (for operators, never for a tenant)."""

    @abstractmethod
    def scan(self, *, batch_size: int = 512) -> Iterator[tuple[str, list[Document], np.ndarray]]:
        """Every document of every scope with its stored vector, as ``(scope, documents, vectors)`` batches of one
        scope each (at most ``batch_size`` documents), each document once. For operators - re-indexing with
        another encoder, export - never for a tenant."""

    def search(
        self,
        *,
        vector: np.ndarray | None = None,
        text: str | None = None,
        encoder: str | None = None,
        k: int = 10,
        mode: SearchMode = "dense",
        filter: Filter | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> list[Hit]:
        """The top ``k`` documents of ``scope`` that match ``filter``.

        ``dense`` needs ``vector`` (the query encoded by the encoder named ``encoder``, which must equal
        ``info.encoder``); ``bm25`` needs ``text``; ``hybrid`` needs both. One query of :meth:`search_many`.
        """
        return self.search_many(
            vectors=None if vector is None else np.atleast_2d(vector),
            texts=None if text is None else [text],
            encoder=encoder,
            k=k,
            mode=mode,
            filter=filter,
            scope=scope,
        )[0]

    @abstractmethod
    def search_many(
        self,
        *,
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        encoder: str | None = None,
        k: int = 10,
        mode: SearchMode = "dense",
        filter: Filter | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> list[list[Hit]]:
        """:meth:`search` for a batch of queries (row i of ``vectors`` with ``texts[i]``), in one backend call."""


class Store(ABC):
    """A set of named collections behind one URI (a folder, or ``milvus://HOST:PORT``)."""

    uri: str

    @abstractmethod
    def create_collection(self, info: CollectionInfo, *, exist_ok: bool = False) -> Collection:
        """Create ``info.name``; with ``exist_ok`` an existing collection with the same task/encoder/dim is returned
        and one with other settings is refused."""

    @abstractmethod
    def collection(self, name: str) -> Collection:
        """An existing collection; an unknown name is a one-line :class:`UserError` listing the known ones."""

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]:
        """Every collection of the store, by name."""

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection and all its documents (durable when it returns)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
