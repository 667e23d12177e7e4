"""Retrieval augmentation for a live LLM application, in-process: every operation of ``llm-embedder serve`` without HTTP.

One embedder serves every retrieval need of the application, each with its own task instruction (the paper's point):

* **collections** of a store bound to a task - knowledge passages (``qa``), conversational search (``convsearch``),
  demonstrations (``icl``), a tool registry (``tool``, each tool's JSON schema kept with it) or a user's own task;
* **conversation memory** (the ``chat`` task): turns are stored exactly as the chat task was trained, one memory item
  per exchange ``"Speaker 1: <user>\\nSpeaker 2: <assistant>"``, in the store under the conversation's id as scope, so
  the store itself keeps one conversation from seeing another. No LLM is called on a write (mem0 / Zep call one per
  memory add and take seconds);
* **long-document memory** (the ``lrlm`` task): text appended to a document is cut into chunks exactly as
  ``llm-embedder build lrlm`` cuts them (the LM's tokens), and a search returns the earlier chunks that help most;
* **augment**: retrieve from several sources at once, build the prompt from the task table, and log the query with
  ALL retrieved candidates so the answer fed back later becomes a training record (:mod:`.feedback`).

Queries of ``convsearch`` and ``tool`` sources are the recent conversation plus the new query, cut from the LEFT to
the token budget (the end of a conversation is what is being asked for), as the convsearch task was trained: a vague
follow-up such as "What is its price?" then still finds the right tool and passage.

All encoding goes through one :class:`~llm_embedder.serving.batcher.MicroBatcher`. Methods are thread-safe. The hot
routes also have coroutine forms (:meth:`RetrievalService.search_async`, :meth:`~RetrievalService.upsert_async`,
:meth:`~RetrievalService.embeddings_async`) that the HTTP layer (:mod:`.app`) awaits on its event loop: they check the
request there, await the encoder without a thread hop, and run the store search of a whole encoder batch in one
``search_many`` call in the encoder thread; the other routes run the plain methods in the server's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.model.truncation import keep_tail
from llm_embedder.retrieval.store.base import SEARCH_MODES, Collection, CollectionInfo, Document, Hit, Store
from llm_embedder.serving.batcher import MicroBatcher, Then
from llm_embedder.serving.errors import Conflict, NotFound, TooLarge
from llm_embedder.serving.feedback import FeedbackLog
from llm_embedder.serving.metrics import ServiceMetrics
from llm_embedder.serving.prompting import Section, build_prompt
from llm_embedder.utils.files import exclusive_lock

#: collection names: identifiers (a store collection name on every backend, Milvus included), never paths
COLLECTION_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: conversation and long-document ids: they become store scopes and URL path segments, never file paths
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: the store collections behind conversation and long-document memory (not user collections)
MEMORY_COLLECTION = "conversation_memory"
DOCUMENT_COLLECTION = "document_memory"
RESERVED = (MEMORY_COLLECTION, DOCUMENT_COLLECTION)
#: tasks whose query is the recent conversation, left-truncated (see the module docstring)
CONVERSATIONAL_TASKS = ("convsearch", "tool")
TOOL_SCHEMA_FIELD = "tool_schema"
_ROLES = ("user", "assistant")


@dataclass
class Limits:
    """Bounds on one request: past them, a one-line 4xx (413 for size) instead of a slow or dying server."""

    max_items: int = 512  # documents, turns or embedding inputs per request
    max_text_chars: int = 200_000  # one text
    max_top_k: int = 200
    max_body_bytes: int = 16 * 1024 * 1024  # HTTP only
    max_queue: int = 256  # requests waiting for the encoder (then 429)
    max_batch_texts: int = 64  # texts per encoder call (1 = no micro-batching)
    recent_pairs: int = 4  # exchanges of the conversation that go into a conversational query
    feedback_candidates: int = 20  # candidates logged per source for the feedback loop (>= the prompt's)


def check_collection_name(value: Any, what: str = "collection") -> str:
    """A collection name: an identifier, as every store backend (Milvus included) accepts."""
    if not isinstance(value, str) or not COLLECTION_PATTERN.fullmatch(value):
        raise UserError(
            f"{what} {value!r} is not a valid name", hint="use 1-64 letters, digits or '_', starting with a letter"
        )
    return value


def check_name(value: Any, what: str) -> str:
    """A conversation or document id: letters, digits, '_' or '-' (no path characters)."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise UserError(
            f"{what} {value!r} is not a valid name",
            hint="use 1-64 letters, digits, '_' or '-', starting with a letter or digit",
        )
    return value


def check_text(value: Any, what: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise UserError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{what} is empty", hint="give a non-empty text")
    if len(value) > limits.max_text_chars:
        raise TooLarge(f"{what} has {len(value)} characters, over the limit of {limits.max_text_chars}")
    return value


def check_count(items: Any, what: str, limits: Limits) -> list[Any]:
    if not isinstance(items, list):
        raise UserError(f"{what} must be a list, got {type(items).__name__}")
    if not items:
        raise UserError(f"{what} is empty", hint="give at least one item")
    if len(items) > limits.max_items:
        raise TooLarge(f"{what} has {len(items)} items, over the limit of {limits.max_items}", hint="send batches")
    return items


def check_top_k(value: Any, limits: Limits, what: str = "top_k") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.max_top_k:
        raise UserError(f"{what} must be an integer in 1..{limits.max_top_k}, got {value!r}")
    return value


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A hit as the API returns it (a tool's schema decoded back into an object)."""
    metadata = dict(hit.document.metadata)
    out: dict[str, Any] = {"id": hit.document.id, "text": hit.document.text, "score": float(hit.score)}
    if hit.document.title:
        out["title"] = hit.document.title
    schema = metadata.pop(TOOL_SCHEMA_FIELD, None)
    if isinstance(schema, str):
        out["schema"] = json.loads(schema)
    out["metadata"] = metadata
    return out


class RetrievalService:
    """All operations of the server (see the module docstring).

    Args:
        embedder: an :class:`~llm_embedder.model.embedder.LLMEmbedder` (anything with ``fingerprint``, ``dim``,
            ``encode``, ``task``, ``instruction``, ``max_length`` and ``model.tokenizer``).
        store: the :class:`~llm_embedder.retrieval.store.base.Store` holding collections and memory.
        data_dir: where the feedback log lives.
        prompt_tokenizer: a callable returning the tokenizer of the LLM the prompts are for (it counts the prompt
            budget and cuts long-document chunks); called on first use, so a server that never builds prompts never
            loads it.
        lm: optional ``generate(prompt) -> str`` for ``augment(..., generate=True)``.
        held: the data folder's lock when the caller took it (:func:`hold_data_dir`); else taken here.
    """

    def __init__(
        self,
        embedder: Any,
        store: Store,
        data_dir: str | Path,
        *,
        limits: Limits | None = None,
        prompt_tokenizer: Any = None,
        lm: Any = None,
        chunk_tokens: int = 128,
        max_prompt_tokens: int = 1024,
        held: contextlib.ExitStack | None = None,
    ) -> None:
        #: the data folder's lock (:func:`hold_data_dir`), released by :meth:`close`
        self._held = held if held is not None else hold_data_dir(data_dir)
        # released if anything below fails; kept by the service (pop_all) once it stands, until close()
        with self._held as taken:
            self.embedder = embedder
            self.store = store
            self.limits = limits or Limits()
            self.data_dir = Path(data_dir)
            self.metrics = ServiceMetrics()
            self.feedback_log = FeedbackLog(self.data_dir / "feedback")
            self.encoder = MicroBatcher(
                self._encode,
                max_queue=self.limits.max_queue,
                max_batch_texts=self.limits.max_batch_texts,
                observer=self.metrics.observe_batch,
            )
            self._prompt_tokenizer_factory = prompt_tokenizer
            self._prompt_tokenizer: Any = None
            self.lm = lm
            self.chunk_tokens = chunk_tokens
            self.max_prompt_tokens = max_prompt_tokens
            self._create_lock = threading.Lock()
            #: collections looked up before, so the event loop finds them without the store's lock (see _collection)
            self._known: dict[str, Collection] = {}
            #: striped locks serialising writes to one conversation / document (read-modify-write of its last item)
            self._scope_locks = [threading.Lock() for _ in range(64)]
            self.memory = self._system_collection(MEMORY_COLLECTION, "chat")
            self.documents = self._system_collection(DOCUMENT_COLLECTION, "lrlm")
            self._held = taken.pop_all()

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        try:
            self.encoder.close()
            self.store.close()
        finally:
            self._held.close()

    def _encode(self, texts: list[str], task: str, side: str) -> np.ndarray:
        return self.embedder.encode(texts, task=task, side=side, show_progress_bar=False)

    def encode(self, texts: Sequence[str], task: str, side: str) -> np.ndarray:
        """Vectors through the micro-batching worker (raises ``Overloaded`` when its queue is full)."""
        self.metrics.queue_depth.set(self.encoder.depth)
        return self.encoder.encode(texts, task, side)

    @property
    def prompt_tokenizer(self) -> Any:
        if self._prompt_tokenizer is None:
            factory = self._prompt_tokenizer_factory
            self._prompt_tokenizer = factory() if callable(factory) else self.embedder.model.tokenizer
        return self._prompt_tokenizer

    def _scope_lock(self, scope: str) -> threading.Lock:
        return self._scope_locks[zlib.crc32(scope.encode("utf-8")) % len(self._scope_locks)]

    def _info(self, name: str, task: str) -> CollectionInfo:
        return CollectionInfo(name=name, task=task, encoder=self.embedder.fingerprint, dim=self.embedder.dim)

    def _system_collection(self, name: str, task: str) -> Collection:
        return self.store.create_collection(self._info(name, task), exist_ok=True)

    def _collection(self, name: Any, *, allow_reserved: bool = False) -> Collection:
        check_collection_name(name)
        if name in RESERVED and not allow_reserved:
            raise UserError(f"collection {name!r} is reserved for memory", hint="use the conversation routes")
        try:
            collection = self.store.collection(name)
        except UserError:  # the store's message names its folder; a client gets the collection names only
            known = {info.name for info in self.store.list_collections()}
            shown = ", ".join(sorted(known - set(RESERVED))) or "none yet"
            raise NotFound(f"unknown collection {name!r}", hint=f"create it first; existing: {shown}") from None
        self._known[name] = collection
        return collection

    async def _collection_async(self, name: Any) -> Collection:
        """:meth:`_collection` without touching the store on the event loop once a name is known.

        The store keeps its collection objects too (a drop by another process is seen by the store call itself);
        only the first lookup of a name goes to a thread, where the store's lock and SQL may wait on a writer.
        """
        check_collection_name(name)
        known = self._known.get(name)
        if known is not None and name not in RESERVED:
            return known
        return await _in_thread(self._collection, name)

    def _task(self, name: Any) -> Any:
        if not isinstance(name, str):
            raise UserError(f"task must be a string, got {type(name).__name__}")
        try:
            return self.embedder.task(name)
        except UserError as exc:
            raise NotFound(exc.message, hint=exc.hint) from None

    def _search(
        self,
        collection: Collection,
        query: str,
        *,
        k: int,
        scope: str = "",
        mode: str = "dense",
        filter: Mapping[str, Any] | None = None,
        vector: np.ndarray | None = None,
    ) -> list[Hit]:
        task = collection.info.task
        if mode not in SEARCH_MODES:
            raise UserError(f"mode {mode!r} is not a search mode", hint=f"choose one of {', '.join(SEARCH_MODES)}")
        if vector is None and mode != "bm25":
            vector = self.encode([query], task, "query")[0]
        start = time.perf_counter()
        hits = collection.search(
            vector=vector,
            text=query if mode != "dense" else None,
            encoder=self.embedder.fingerprint,
            k=k,
            mode=mode,  # type: ignore[arg-type]
            filter=dict(filter) if filter else None,
            scope=scope,
        )
        self.metrics.search_seconds.labels(task, mode).observe(time.perf_counter() - start)
        return hits

    # ------------------------------------------------------------------ collections
    def create_collection(self, name: Any, task: Any, *, index: Any = "flat") -> dict[str, Any]:
        """A collection bound to ``task`` (refused if it exists with another task; the same task is a no-op).

        ``index``: ``flat`` (exact search) or an approximate index of the store (``hnsw`` / ``ivf`` embedded) for
        large collections.
        """
        check_collection_name(name)
        if name in RESERVED:
            raise UserError(f"collection name {name!r} is reserved for memory", hint="choose another name")
        spec = self._task(task)
        with self._create_lock:
            for info in self.store.list_collections():
                if info.name == name and (info.task, info.index) != (spec.name, index):
                    raise Conflict(
                        f"collection {name!r} exists with task {info.task!r} and index {info.index!r}",
                        hint="drop it first or choose another name",
                    )
                if info.name == name and info.encoder != self.embedder.fingerprint:
                    raise Conflict(
                        f"collection {name!r} holds vectors of another encoder ({info.encoder})",
                        hint="serve it with that encoder, or drop it and ingest again",
                    )
            if not isinstance(index, str):
                raise UserError(f"index must be a string, got {type(index).__name__}")
            info = CollectionInfo(
                name=name, task=spec.name, encoder=self.embedder.fingerprint, dim=self.embedder.dim, index=index
            )
            collection = self.store.create_collection(info, exist_ok=True)
            self._known.pop(name, None)
        return self._describe(collection.info)

    def _describe(self, info: CollectionInfo) -> dict[str, Any]:
        collection = self.store.collection(info.name)
        return {
            "name": info.name,
            "task": info.task,
            "count": collection.count(scope=None),
            "encoder": info.encoder,
            "index": info.index,
        }

    def list_collections(self) -> list[dict[str, Any]]:
        return [self._describe(i) for i in self.store.list_collections() if i.name not in RESERVED]

    def drop_collection(self, name: Any) -> None:
        self._collection(name)
        self._known.pop(name, None)
        self.store.drop_collection(name)

    def upsert(self, name: Any, documents: Any) -> list[str]:
        """Insert or replace documents ``[{"id"?, "text", "title"?, "metadata"?, "schema"?}]``; returns their ids.

        ``schema`` (a tool's JSON schema, any JSON object) is kept with the document and returned with its hits.
        """
        collection = self._collection(name)
        docs, keys, task = self._documents_in(collection, documents)
        vectors = self.encode(keys, task, "key")
        return collection.upsert(docs, vectors, encoder=self.embedder.fingerprint)

    async def upsert_async(self, name: Any, documents: Any) -> list[str]:
        """:meth:`upsert` awaited: checked on the loop, encoded by the worker, written (durably) in a thread."""
        collection = await self._collection_async(name)
        docs, keys, task = self._documents_in(collection, documents)
        vectors = await self.encoder.run(keys, task, "key")
        return await _in_thread(collection.upsert, docs, vectors, encoder=self.embedder.fingerprint)

    def _documents_in(self, collection: Collection, documents: Any) -> tuple[list[Document], list[str], str]:
        """Checked documents of an upsert and the key texts to encode (the task's key template)."""
        check_count(documents, "documents", self.limits)
        spec = self._task(collection.info.task)
        docs: list[Document] = []
        keys: list[str] = []
        for i, raw in enumerate(documents):
            where = f"documents[{i}]"
            if not isinstance(raw, Mapping):
                raise UserError(f"{where} must be an object, got {type(raw).__name__}")
            text = check_text(raw.get("text"), f"{where}.text", self.limits)
            title = raw.get("title") or ""
            if not isinstance(title, str):
                raise UserError(f"{where}.title must be a string, got {type(title).__name__}")
            doc_id = raw.get("id")
            if doc_id is None:
                doc_id = uuid.uuid4().hex
            elif not isinstance(doc_id, str) or not doc_id or len(doc_id) > 256:
                raise UserError(f"{where}.id must be a non-empty string of at most 256 characters, got {doc_id!r}")
            metadata = raw.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise UserError(f"{where}.metadata must be an object, got {type(metadata).__name__}")
            metadata = dict(metadata)
            if TOOL_SCHEMA_FIELD in metadata:
                raise UserError(f"{where}.metadata.{TOOL_SCHEMA_FIELD} is reserved", hint="pass the schema as 'schema'")
            schema = raw.get("schema")
            if schema is not None:
                if not isinstance(schema, Mapping):
                    raise UserError(f"{where}.schema must be a JSON object, got {type(schema).__name__}")
                metadata[TOOL_SCHEMA_FIELD] = json.dumps(schema, ensure_ascii=False, sort_keys=True)
            doc = Document(id=doc_id, text=text, title=title, metadata=metadata)
            docs.append(doc)
            keys.append(doc.key(spec.key_template, where=where))
        return docs, keys, spec.name

    def delete_documents(self, name: Any, *, ids: Any = None, filter: Any = None) -> int:
        collection = self._collection(name)
        if not ids and not filter:
            raise UserError("nothing to delete: neither 'ids' nor 'filter' given", hint="name ids or a filter")
        if ids is not None:
            check_count(ids, "ids", self.limits)
            if not all(isinstance(i, str) for i in ids):
                raise UserError("ids must be a list of strings")
        if filter is not None and not isinstance(filter, Mapping):
            raise UserError(f"filter must be an object, got {type(filter).__name__}")
        return collection.delete(ids=ids or None, filter=filter or None)

    def get_documents(self, name: Any, ids: Any) -> list[dict[str, Any] | None]:
        collection = self._collection(name)
        check_count(ids, "ids", self.limits)
        out = []
        for doc in collection.get(list(ids)):
            out.append(None if doc is None else hit_dict(Hit(doc, 0.0)) | {"score": None})
        return out

    def search(
        self, name: Any, query: Any, *, top_k: Any = 10, filter: Any = None, mode: Any = "dense"
    ) -> list[dict[str, Any]]:
        """Top hits of a collection, the query encoded with the collection's task instruction."""
        collection = self._collection(name)
        query = check_text(query, "query", self.limits)
        check_top_k(top_k, self.limits)
        if filter is not None and not isinstance(filter, Mapping):
            raise UserError(f"filter must be an object, got {type(filter).__name__}")
        return [hit_dict(h) for h in self._search(collection, query, k=top_k, mode=mode, filter=filter)]

    async def search_async(
        self, name: Any, query: Any, *, top_k: Any = 10, filter: Any = None, mode: Any = "dense"
    ) -> list[dict[str, Any]]:
        """:meth:`search` awaited: the concurrent searches of one encoder batch share one ``search_many`` call."""
        collection = await self._collection_async(name)
        query = check_text(query, "query", self.limits)
        check_top_k(top_k, self.limits)
        if filter is not None and not isinstance(filter, Mapping):
            raise UserError(f"filter must be an object, got {type(filter).__name__}")
        if mode not in SEARCH_MODES:
            raise UserError(f"mode {mode!r} is not a search mode", hint=f"choose one of {', '.join(SEARCH_MODES)}")
        if mode == "bm25":  # nothing to encode
            return await _in_thread(self.search, name, query, top_k=top_k, filter=filter, mode=mode)
        task = collection.info.task
        key = (collection.info.name, top_k, mode, json.dumps(filter, sort_keys=True, default=str))
        then = Then(key, functools.partial(self._search_batch, collection, top_k, mode, filter), query)
        return await self.encoder.run([query], task, "query", then=then)

    def _search_batch(
        self, collection: Collection, k: int, mode: str, filter: Mapping[str, Any] | None, items: list[Any]
    ) -> list[list[dict[str, Any]]]:
        """One store call for the searches of an encoder batch (runs in the encoder thread; faiss frees the GIL)."""
        start = time.perf_counter()
        ranked = collection.search_many(
            vectors=np.concatenate([vectors for vectors, _ in items]),
            texts=[query for _, query in items] if mode != "dense" else None,
            encoder=self.embedder.fingerprint,
            k=k,
            mode=mode,  # type: ignore[arg-type]
            filter=dict(filter) if filter else None,
        )
        self.metrics.search_seconds.labels(collection.info.task, mode).observe(time.perf_counter() - start)
        return [[hit_dict(h) for h in hits] for hits in ranked]

    # ------------------------------------------------------------------ conversation memory
    def _pairs(self, conversation: str) -> tuple[int, Document | None]:
        """Number of stored exchanges of a conversation and the last one."""
        n = self.memory.count(scope=conversation)
        if n == 0:
            return 0, None
        return n, self.memory.get([str(n - 1)], scope=conversation)[0]

    def add_turns(self, conversation: Any, turns: Any) -> dict[str, Any]:
        """Append turns ``[{"role": "user"|"assistant", "content"}]``; returns the exchanges stored so far.

        A user turn opens an exchange ("Speaker 1: ..."), the assistant's reply completes it ("...\\nSpeaker 2: ...");
        consecutive turns of one role are merged, as ``build chat`` merges them. An open exchange is not searched
        (it is the question being asked, not memory).
        """
        conversation = check_name(conversation, "conversation id")
        check_count(turns, "turns", self.limits)
        parsed = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                raise UserError(f"turns[{i}] must be an object, got {type(turn).__name__}")
            role = turn.get("role")
            if role not in _ROLES:
                raise UserError(f"turns[{i}].role is {role!r}", hint="use 'user' or 'assistant'")
            parsed.append((role, " ".join(check_text(turn.get("content"), f"turns[{i}].content", self.limits).split())))
        with self._scope_lock(conversation):
            n, last = self._pairs(conversation)
            pairs: dict[int, list[str]] = {}  # index -> [user, assistant, open?]
            if last is not None:
                pairs[n - 1] = [last.metadata.get("user", ""), last.metadata.get("assistant", "")]
            current = n - 1
            for role, content in parsed:
                if current < 0 or (role == "user" and pairs.get(current, ["", ""])[1]):
                    current += 1
                    pairs[current] = ["", ""]
                slot = 0 if role == "user" else 1
                pairs[current][slot] = f"{pairs[current][slot]} {content}".strip()
            changed = sorted(pairs)
            if last is not None and pairs.get(n - 1) == [
                last.metadata.get("user", ""),
                last.metadata.get("assistant", ""),
            ]:
                changed.remove(n - 1)
            docs = [self._memory_document(i, *pairs[i]) for i in changed]
            if docs:
                vectors = self.encode([d.text for d in docs], "chat", "key")
                self.memory.upsert(docs, vectors, encoder=self.embedder.fingerprint, scope=conversation)
            return {"conversation_id": conversation, "exchanges": max(pairs) + 1 if pairs else n}

    @staticmethod
    def _memory_document(index: int, user: str, assistant: str) -> Document:
        if assistant:
            text = f"Speaker 1: {user}\nSpeaker 2: {assistant}"
        else:
            text = f"Speaker 1: {user}"
        return Document(
            id=str(index),
            text=text,
            metadata={"pair": index, "open": not assistant, "user": user, "assistant": assistant},
        )

    def search_conversation(self, conversation: Any, query: Any, *, top_k: Any = 3) -> list[dict[str, Any]]:
        """Earlier exchanges of THIS conversation, most useful first (the chat task's instruction)."""
        conversation = check_name(conversation, "conversation id")
        query = check_text(query, "query", self.limits)
        check_top_k(top_k, self.limits)
        hits = self._search(self.memory, query, k=top_k, scope=conversation, filter={"open": False})
        return [hit_dict(h) for h in hits]

    def recent_turns(self, conversation: str, pairs: int) -> list[str]:
        """The texts of the last ``pairs`` exchanges, oldest first (user, assistant, user, ...)."""
        n = self.memory.count(scope=conversation)
        ids = [str(i) for i in range(max(0, n - pairs), n)]
        out: list[str] = []
        for doc in self.memory.get(ids, scope=conversation) if ids else []:
            if doc is not None:
                out += [t for t in (doc.metadata.get("user", ""), doc.metadata.get("assistant", "")) if t]
        return out

    def forget_conversation(self, conversation: Any) -> int:
        conversation = check_name(conversation, "conversation id")
        with self._scope_lock(conversation):
            if self.memory.count(scope=conversation) == 0:
                return 0
            return self.memory.delete(scope=conversation, filter={"pair": {"$gte": 0}})

    # ------------------------------------------------------------------ long-document memory
    def append_text(self, document: Any, text: Any) -> dict[str, Any]:
        """Append ``text`` to a long document; it is cut into chunks of ``chunk_tokens`` LM tokens, the last chunk
        staying open (re-cut with the next append) until it is full, as ``build lrlm`` cuts a whole file."""
        from llm_embedder.builders.lrlm import chunk_text

        document = check_name(document, "document id")
        if not isinstance(text, str):
            raise UserError(f"text must be a string, got {type(text).__name__}")
        check_text(text, "text", self.limits)
        with self._scope_lock("doc:" + document):
            n = self.documents.count(scope=document)
            start = n
            tail = ""
            if n:
                last = self.documents.get([str(n - 1)], scope=document)[0]
                if last is not None and last.metadata.get("tokens", 0) < self.chunk_tokens:
                    tail, start = last.text, n - 1
            chunks = chunk_text(self.prompt_tokenizer, tail + text, self.chunk_tokens)
            lengths = [len(ids) for ids in self.prompt_tokenizer(chunks, add_special_tokens=False)["input_ids"]]
            docs = [
                Document(id=str(start + i), text=chunk, metadata={"chunk": start + i, "tokens": length})
                for i, (chunk, length) in enumerate(zip(chunks, lengths, strict=True))
            ]
            if docs:
                vectors = self.encode([d.text for d in docs], "lrlm", "key")
                self.documents.upsert(docs, vectors, encoder=self.embedder.fingerprint, scope=document)
            return {"document_id": document, "chunks": start + len(docs)}

    def search_document(self, document: Any, query: Any = None, *, top_k: Any = 2) -> list[dict[str, Any]]:
        """Earlier chunks of a long document that help continue it; the query defaults to its last chunk."""
        document = check_name(document, "document id")
        check_top_k(top_k, self.limits)
        n = self.documents.count(scope=document)
        if n == 0:
            raise NotFound(f"unknown document {document!r}", hint="append text to it first")
        last = n
        if query is None:
            current = self.documents.get([str(n - 1)], scope=document)[0]
            query, last = (current.text if current else ""), n - 1
        query = check_text(query, "query", self.limits)
        hits = self._search(self.documents, query, k=top_k, scope=document, filter={"chunk": {"$lt": last}})
        return [hit_dict(h) for h in hits]

    def forget_document(self, document: Any) -> int:
        document = check_name(document, "document id")
        with self._scope_lock("doc:" + document):
            if self.documents.count(scope=document) == 0:
                return 0
            return self.documents.delete(scope=document, filter={"chunk": {"$gte": 0}})

    # ------------------------------------------------------------------ augment and feedback
    def conversational_query(self, task: str, query: str, conversation: str | None) -> str:
        """The recent conversation + ``query`` joined as convsearch queries are, cut from the left to the budget."""
        texts = self.recent_turns(conversation, self.limits.recent_pairs) if conversation else []
        joined = " ".join([*texts, query])
        return keep_tail([joined], self.embedder.model.tokenizer, self.embedder.text_budget(task, "query"))[0]

    def augment(
        self,
        query: Any,
        *,
        sources: Any,
        conversation_id: Any = None,
        max_prompt_tokens: Any = None,
        generate: bool = False,
    ) -> dict[str, Any]:
        """Retrieve from every source with its task and build the prompt; the candidates are logged for feedback.

        A source is ``{"collection": NAME, "top_k"?, "filter"?, "mode"?, "conversation"?}``,
        ``{"memory": "conversation", "top_k"?}`` (needs ``conversation_id``) or
        ``{"memory": "document", "document_id": ID, "top_k"?}``. ``conversation`` (default: true for convsearch and
        tool collections) makes the collection's query the recent conversation + the query, left-truncated.
        """
        query = check_text(query, "query", self.limits)
        if conversation_id is not None:
            conversation_id = check_name(conversation_id, "conversation_id")
        budget = self.max_prompt_tokens if max_prompt_tokens is None else max_prompt_tokens
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 16:
            raise UserError(f"max_prompt_tokens must be an integer >= 16, got {budget!r}")
        if generate and self.lm is None:
            raise UserError("generate needs an LM", hint="start the server with --lm NAME")
        check_count(sources, "sources", self.limits)
        plans = [self._plan(i, source, query, conversation_id) for i, source in enumerate(sources)]
        sections: list[Section] = []
        retrieved: list[list[Hit]] = []
        keys: list[list[str]] = []
        for plan in plans:
            k = max(plan["top_k"], self.limits.feedback_candidates)
            hits = self._search(
                plan["collection"], plan["query"], k=k, scope=plan["scope"], mode=plan["mode"], filter=plan["filter"]
            )
            retrieved.append(hits)
            shown = hits[: plan["top_k"]]
            plan["shown"] = shown
            positions = [int(h.document.id) for h in shown] if plan["chronological"] else None
            spec = self._task(plan["collection"].info.task)
            # the prompt shows, and the log keeps, each candidate as its KEY (for qa "{title} {text}"): what the
            # embedder encoded, what eval's prompts and the reward's prompts show, so a record exported from this
            # log is scored and trained on the same text that is served
            hit_keys = [h.document.key(spec.key_template) for h in hits]
            keys.append(hit_keys)
            sections.append(Section(spec, hit_keys[: len(shown)], positions))
        prompt = build_prompt(
            sections, query, tokenizer=self.prompt_tokenizer, max_tokens=budget, task=self.embedder.task
        )
        augment_id = uuid.uuid4().hex
        entries: dict[str, dict[str, Any]] = {}
        out_hits = []
        for plan, hits, hit_keys, section in zip(plans, retrieved, keys, sections, strict=True):
            in_prompt = [plan["shown"][j].document.id for j in sorted(section.kept)]
            for hit in plan["shown"]:
                out_hits.append({"source": plan["name"], "in_prompt": hit.document.id in in_prompt, **hit_dict(hit)})
            entries[plan["log"]] = {
                "query": plan["record_query"],
                "task": plan["collection"].info.task,
                "history_task": plan["collection"].info.task == "chat",
                "scope": plan["scope"],
                "candidates": [
                    {"id": h.document.id, "key": key, "score": h.score} for h, key in zip(hits, hit_keys, strict=True)
                ],
                "in_prompt": in_prompt,
                "time": time.time(),
            }
        self.feedback_log.record_augment(augment_id, entries)
        result: dict[str, Any] = {"augment_id": augment_id, "prompt": prompt, "hits": out_hits}
        if generate:  # the LM's answer is the feedback unless the application sends another one later
            result["answer"] = self.lm(prompt)
            if result["answer"].strip():
                self.feedback_log.record_answer(augment_id, result["answer"])
        return result

    def _plan(self, i: int, source: Any, query: str, conversation: str | None) -> dict[str, Any]:
        where = f"sources[{i}]"
        if not isinstance(source, Mapping):
            raise UserError(f"{where} must be an object, got {type(source).__name__}")
        top_k = check_top_k(source.get("top_k", 3), self.limits, f"{where}.top_k")
        if "collection" in source:
            collection = self._collection(source["collection"])
            task = collection.info.task
            with_conversation = source.get("conversation")
            if with_conversation is None:
                with_conversation = task in CONVERSATIONAL_TASKS
            elif not isinstance(with_conversation, bool):
                raise UserError(f"{where}.conversation must be true or false, got {with_conversation!r}")
            record_query = query
            if with_conversation:
                record_query = self.conversational_query(task, query, conversation)
            return {
                "name": source["collection"],
                "log": source["collection"],
                "collection": collection,
                "scope": "",
                "query": record_query,
                "record_query": record_query,
                "top_k": top_k,
                "mode": source.get("mode", "dense"),
                "filter": source.get("filter"),
                "chronological": False,
            }
        memory = source.get("memory")
        if memory == "conversation":
            if conversation is None:
                raise UserError(f"{where}: conversation memory needs 'conversation_id'", hint="add conversation_id")
            return {
                "name": "memory",
                "log": MEMORY_COLLECTION,
                "collection": self.memory,
                "scope": conversation,
                "query": query,
                "record_query": query,
                "top_k": top_k,
                "mode": "dense",
                "filter": {"open": False},
                "chronological": True,
            }
        if memory == "document":
            document = check_name(source.get("document_id"), f"{where}.document_id")
            return {
                "name": f"document:{document}",
                "log": DOCUMENT_COLLECTION,
                "collection": self.documents,
                "scope": document,
                "query": query,
                "record_query": query,
                "top_k": top_k,
                "mode": "dense",
                "filter": None,
                "chronological": True,
            }
        raise UserError(f"{where} names no source", hint="give 'collection', or 'memory': 'conversation' or 'document'")

    def feedback(self, augment_id: Any, answer: Any) -> None:
        """Record the answer the LLM (or user) finally gave to an augmented prompt."""
        if not isinstance(augment_id, str) or not self.feedback_log.knows(augment_id):
            raise NotFound(f"unknown augment_id {augment_id!r}", hint="use the augment_id returned by augment")
        answer = check_text(answer, "answer", self.limits)
        self.feedback_log.record_answer(augment_id, answer)

    def export_feedback(self, name: Any) -> list[dict[str, Any]]:
        """The collection's answered augments as training records (``llm-embedder score`` then ``train``)."""
        return list(self.iter_feedback(name))

    def iter_feedback(self, name: Any) -> Iterator[dict[str, Any]]:
        """:meth:`export_feedback` as a stream (checked before the first record is read)."""
        check_collection_name(name)
        known = name in RESERVED or any(info.name == name for info in self.store.list_collections())
        if not known and not self.feedback_log.has(name):  # a dropped collection's log stays exportable
            raise NotFound(f"unknown collection {name!r}", hint="no such collection and no feedback logged for it")
        return self.feedback_log.records(name)

    # ------------------------------------------------------------------ embeddings
    def embeddings(self, inputs: Any, *, task: Any = None, input_type: Any = None) -> np.ndarray:
        """Vectors for ``inputs`` as queries or passages of ``task`` (default qa queries)."""
        texts, task_name, side = self._embeddings_in(inputs, task, input_type)
        return self.encode(texts, task_name, side)

    async def embeddings_async(
        self, inputs: Any, *, task: Any = None, input_type: Any = None
    ) -> tuple[np.ndarray, int]:
        """:meth:`embeddings` awaited, with the number of tokens of ``inputs`` (counted in the encoder thread)."""
        texts, task_name, side = self._embeddings_in(inputs, task, input_type)
        then = Then("tokens", self._count_tokens, texts)
        return await self.encoder.run(texts, task_name, side, then=then)

    def _count_tokens(self, items: list[tuple[np.ndarray, list[str]]]) -> list[tuple[np.ndarray, int]]:
        """The OpenAI ``usage``: tokens of the inputs as given (one tokenizer call for the batch)."""
        texts = [t for _, inputs in items for t in inputs]
        lengths = [len(ids) for ids in self.embedder.model.tokenizer(texts)["input_ids"]]
        out, offset = [], 0
        for vectors, inputs in items:
            out.append((vectors, sum(lengths[offset : offset + len(inputs)])))
            offset += len(inputs)
        return out

    def _embeddings_in(self, inputs: Any, task: Any, input_type: Any) -> tuple[list[str], str, str]:
        if isinstance(inputs, str):
            inputs = [inputs]
        check_count(inputs, "input", self.limits)
        for i, text in enumerate(inputs):
            check_text(text, f"input[{i}]", self.limits)
        spec = self._task(task if task is not None else "qa")
        side = {"query": "query", "passage": "key", "document": "key", None: "query"}.get(input_type)
        if side is None:
            raise UserError(f"input_type {input_type!r} is not known", hint="use 'query' or 'passage'")
        return list(inputs), spec.name, side

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "encoder": self.embedder.fingerprint,
            "store": self.store.uri,
            "queue": self.encoder.depth,
        }


def serving_backend(backend: str, device: str | None) -> str:
    """``auto``: ONNX Runtime with int8 weights on a CPU, torch on a GPU; any other name is returned as it is.

    Why int8 on a CPU: it is the fastest CPU path of the encoder (about 4x sentence-transformers, nDCG@10 within 1% of
    fp32: benchmarks/README.md, section encode), and a server on a CPU is bound by the encoder. Its vectors differ
    slightly from fp32 ones (cosine >= 0.986), so a collection is best searched with the backend that filled it;
    ``--backend torch`` or ``onnx`` (exactly the fp32 vectors) choose otherwise.
    """
    if backend != "auto":
        return backend
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "onnx-int8" if device == "cpu" else "torch"


async def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in the loop's default thread pool (store writes: SQLite commits wait on disk)."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args, **kwargs))


def hold_data_dir(data_dir: str | Path) -> contextlib.ExitStack:
    """Take ``data_dir`` for this process until the returned stack is closed: one server (or ``reindex``) per folder.

    Why: two servers on one folder would each know only their own augment ids (feedback for the other's would be a
    404), and ``reindex`` rebuilds a collection from a copy, so a write a running server acknowledged meanwhile
    would be lost. An OS lock (``DIR/service.lock``, released by the kernel even on kill -9), refused in one line.
    """
    folder = Path(data_dir)
    stack = contextlib.ExitStack()
    stack.enter_context(
        exclusive_lock(
            folder / "service",
            busy="this data folder is in use by another llm-embedder process (a server or a reindex)",
            hint="stop that process first, or give this one another --data-dir",
        )
    )
    return stack


def open_service(
    data_dir: str | Path,
    *,
    model: str | None = None,
    store: str | None = None,
    backend: str = "auto",
    device: str | None = None,
    lm: str | None = None,
    limits: Limits | None = None,
    chunk_tokens: int = 128,
    max_prompt_tokens: int = 1024,
    use_instructions: bool | None = None,
) -> RetrievalService:
    """A service over the encoder ``model`` (default: the bundled one) and the store at ``store`` (default: the
    embedded store in ``DATA_DIR/store``). ``lm`` (a bundled name, folder or hub id) is the LLM the prompts are for:
    its tokenizer counts the prompt budget and cuts long documents, and ``generate`` uses it; without it the bundled
    SmolLM2 tokenizer is used and ``generate`` is refused.

    ``backend="auto"`` (see :func:`serving_backend`) picks the encoder's fastest runtime for the device."""
    from llm_embedder.model.embedder import LLMEmbedder
    from llm_embedder.retrieval.store import open_store

    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    # the folder first, before loading anything: a second server on it is refused at once; the lock is released if
    # anything below fails, and handed to the service (pop_all) when it is built
    with hold_data_dir(data) as held:
        backend = serving_backend(backend, device)
        embedder = LLMEmbedder(model, device=device, backend=backend, use_instructions=use_instructions)  # type: ignore[arg-type]

        def prompt_tokenizer() -> Any:
            from transformers import AutoTokenizer

            from llm_embedder.lm.loading import resolve_lm

            return AutoTokenizer.from_pretrained(resolve_lm(lm))

        generator = None
        if lm is not None:
            from llm_embedder.serving.generation import Generator

            generator = Generator.load(lm)
        return RetrievalService(
            embedder,
            open_store(store or str(data / "store")),
            data,
            limits=limits,
            prompt_tokenizer=prompt_tokenizer,
            lm=generator,
            chunk_tokens=chunk_tokens,
            max_prompt_tokens=max_prompt_tokens,
            held=held.pop_all(),
        )
