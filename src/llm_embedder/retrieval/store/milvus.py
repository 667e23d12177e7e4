"""Milvus behind the store contract, through pymilvus' ``MilvusClient`` (a ``milvus-lite server``, a standalone or
distributed Milvus, Zilliz Cloud: one client API). Install with the ``milvus`` extra.

One Milvus collection per store collection, with these fields::

    pk        VARCHAR primary key = JSON [scope, id]   (ids are unique per scope, as the contract says)
    scope     VARCHAR partition key                    (every read/delete adds ``scope == ...`` here, in the class)
    doc_id, title, text, metadata (JSON, returned as given), seq (INT64, insertion order for ties)
    fmeta     JSON {"v": scalars, "k": ["field:kind"]}  (the filterable, typed copy; see retrieval/store/filters.py)
    content   VARCHAR title + " " + text, analysed (standard tokenizer, lower case, English stop words, stemmer)
    vector    FLOAT_VECTOR(dim), index FLAT (exact) or HNSW, metric IP (cosine on unit vectors)
    sparse    SPARSE_FLOAT_VECTOR = Milvus' own BM25 function of ``content`` (full-text search)

Hybrid search is Milvus' ``hybrid_search`` with its ``RRFRanker(60)``, the same fusion as the embedded store. The
task, encoder fingerprint, dimension and index are recorded in the collection's properties and checked on every
write and query. BM25 statistics are those of the whole collection (Milvus computes them per collection), so BM25
scores differ from the embedded store's (whose statistics are per scope and whose tokenizer is bm25s'); the ranking
contract (scope, filter, exact dense top-k) is identical.

Durability: writes use consistency level ``Strong`` and Milvus acknowledges an insert or delete once it is in its
write-ahead log; reads see every acknowledged write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.store.base import (
    DEFAULT_SCOPE,
    Collection,
    CollectionInfo,
    Document,
    Filter,
    Hit,
    SearchMode,
    Store,
)
from llm_embedder.retrieval.store.checks import (
    check_delete_selector,
    check_documents,
    check_name,
    check_scope,
    check_search_batch,
    check_vectors,
    info_from_json,
    info_to_json,
    same_settings,
)
from llm_embedder.retrieval.store.filters import TYPED_FIELD, milvus_literal, parse_filter, to_milvus, typed_metadata

INFO_PROPERTY = "llm_embedder.info"
MILVUS_INDEXES = ("flat", "hnsw")
#: Milvus' VARCHAR limit (bytes)
MAX_VARCHAR = 65535
MAX_KEY = 1024
BATCH = 512
#: rows per query page when collecting primary keys to delete
PAGE = 16384
HYBRID_DEPTH = 100
ANN_DEFAULTS = {"hnsw": {"M": 32, "ef_construction": 100, "ef_search": 64}}
#: the same analysis idea as the embedded store's bm25s (lower case, English stop words, Snowball English stemmer)
ANALYZER = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": ["_english_"]}, {"type": "stemmer", "language": "english"}],
}
OUTPUT = ["doc_id", "title", "text", "metadata", "seq"]


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise UserError(
            "Milvus needs pymilvus", hint="pip install 'llm-embedder[milvus]' (pymilvus 3, milvus-lite 3.2)"
        ) from None
    return pymilvus


def _pk(scope: str, doc_id: str) -> str:
    return json.dumps([scope, doc_id], ensure_ascii=False)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


class MilvusCollection(Collection):
    """A collection of a :class:`MilvusStore` (see the module docstring)."""

    def __init__(self, store: MilvusStore, info: CollectionInfo) -> None:
        self.store = store
        self.info = info
        self.client = store.client

    def _scope_expr(self, scope: str) -> str:
        return f"scope == {milvus_literal(check_scope(scope))}"

    def _expr(self, scope: str, filter: Filter | None, extra: str | None = None) -> str:
        parts = [self._scope_expr(scope)]
        conditions = parse_filter(filter)
        if conditions:
            parts.append(to_milvus(conditions))
        if extra:
            parts.append(extra)
        return " and ".join(f"({p})" for p in parts)

    def upsert(
        self, documents: Sequence[Document], vectors: np.ndarray, *, encoder: str, scope: str = DEFAULT_SCOPE
    ) -> list[str]:
        scope = check_scope(scope)
        docs = check_documents(documents)
        array = check_vectors(self.info, vectors, encoder, len(docs), "the vectors")
        if _utf8_len(scope) > MAX_KEY:
            raise UserError(f"scope is longer than {MAX_KEY} bytes")
        seq0 = time.time_ns()
        rows = []
        for i, (doc, vec) in enumerate(zip(docs, array, strict=True)):
            content = f"{doc.title} {doc.text}".strip()
            if _utf8_len(doc.id) > MAX_KEY:
                raise UserError(f"document id {doc.id[:40]!r}... is longer than {MAX_KEY} bytes")
            if _utf8_len(content) > MAX_VARCHAR:
                raise UserError(
                    f"document {doc.id!r}: title + text is {_utf8_len(content)} bytes, Milvus keeps at most "
                    f"{MAX_VARCHAR}",
                    hint="split long documents into passages",
                )
            rows.append(
                {
                    "pk": _pk(scope, doc.id),
                    "scope": scope,
                    "doc_id": doc.id,
                    "title": doc.title,
                    "text": doc.text,
                    "content": content,
                    "metadata": dict(doc.metadata),
                    TYPED_FIELD: typed_metadata(doc.metadata),
                    "seq": seq0 + i,
                    "vector": vec.tolist(),
                }
            )
        for lo in range(0, len(rows), BATCH):
            self.client.upsert(self.info.name, rows[lo : lo + BATCH])
        return [d.id for d in docs]

    def delete(
        self, *, scope: str = DEFAULT_SCOPE, ids: Sequence[str] | None = None, filter: Filter | None = None
    ) -> int:
        scope = check_scope(scope)
        check_delete_selector(ids, filter)
        extra = None
        if ids:
            extra = f"pk in {milvus_literal([_pk(scope, str(i)) for i in ids])}"
        expr = self._expr(scope, filter, extra)
        deleted = 0
        while True:  # find the keys first: the count is exact and only this scope's rows can be named
            rows = self.client.query(self.info.name, filter=expr, output_fields=["pk"], limit=PAGE)
            if not rows:
                return deleted
            self.client.delete(self.info.name, ids=[r["pk"] for r in rows])
            deleted += len(rows)

    def get(self, ids: Sequence[str], *, scope: str = DEFAULT_SCOPE) -> list[Document | None]:
        scope = check_scope(scope)
        if not ids:
            return []
        pks = [_pk(scope, str(i)) for i in ids]
        found = {}
        for lo in range(0, len(pks), PAGE):
            for row in self.client.get(self.info.name, ids=pks[lo : lo + PAGE], output_fields=OUTPUT):
                found[row["pk"]] = _document(row)
        return [found.get(pk) for pk in pks]

    def count(self, *, scope: str | None = DEFAULT_SCOPE) -> int:
        expr = "" if scope is None else self._scope_expr(scope)
        rows = self.client.query(self.info.name, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def scan(self, *, batch_size: int = 512) -> Iterator[tuple[str, list[Document], np.ndarray]]:
        # Pages by primary key, as pymilvus' own query_iterator does (its query options make the server return the
        # smallest keys above the last page's); that iterator cannot be used here: it writes our JSON keys into its
        # expression unescaped. No offset window, so any collection size.
        last: str | None = None
        while True:
            rows = self.client.query(
                self.info.name,
                filter="" if last is None else f"pk > {milvus_literal(last)}",
                output_fields=["pk", "scope", *OUTPUT, "vector"],
                limit=int(batch_size),
                # the query options of pymilvus' iterator: the server returns the smallest keys, sorted
                iterator="True",
                reduce_stop_for_best="True",
            )
            if not rows:
                return
            rows.sort(key=lambda r: str(r["pk"]))
            last = str(rows[-1]["pk"])
            for scope in dict.fromkeys(str(r["scope"]) for r in rows):
                part = [r for r in rows if str(r["scope"]) == scope]
                vectors = np.asarray([r["vector"] for r in part], dtype=np.float32).reshape(len(part), -1)
                yield scope, [_document(r) for r in part], vectors

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
        scope, queries = check_search_batch(self.info, mode, vectors, texts, encoder, k, scope)
        expr = self._expr(scope, filter)
        k = int(k)
        n = len(queries) if queries is not None else len(texts or [])
        if n == 0:
            return []
        dense_params = {"metric_type": "IP", "params": self._search_params()}
        if mode == "dense":
            results = self.client.search(
                self.info.name,
                data=queries.tolist(),  # type: ignore[union-attr]
                anns_field="vector",
                limit=k,
                filter=expr,
                output_fields=OUTPUT,
                search_params=dense_params,
            )
        elif mode == "bm25":
            results = self.client.search(
                self.info.name,
                data=list(texts or []),
                anns_field="sparse",
                limit=k,
                filter=expr,
                output_fields=OUTPUT,
                search_params={"metric_type": "BM25"},
            )
        else:
            pymilvus = _pymilvus()
            depth = max(k, HYBRID_DEPTH)
            requests = [
                pymilvus.AnnSearchRequest(
                    data=queries.tolist(),  # type: ignore[union-attr]
                    anns_field="vector",
                    param=dense_params,
                    limit=depth,
                    expr=expr,
                ),
                pymilvus.AnnSearchRequest(
                    data=list(texts or []), anns_field="sparse", param={"metric_type": "BM25"}, limit=depth, expr=expr
                ),
            ]
            results = self.client.hybrid_search(
                self.info.name, requests, pymilvus.RRFRanker(60), limit=k, output_fields=OUTPUT
            )
        out = []
        for hits in results:
            ranked = [(_score(h, mode), int(h["entity"]["seq"]), _document(h["entity"])) for h in hits]
            ranked.sort(key=lambda r: (-r[0], r[1]))
            out.append([Hit(doc, score) for score, _, doc in ranked[:k]])
        return out

    def tune(self, *, ef_search: int | None = None) -> None:
        """Trade recall for speed at query time (HNSW ``ef``), for this client."""
        if ef_search is not None:
            self.info = replace(self.info, extra={**self.info.extra, "ef_search": int(ef_search)})

    def _search_params(self) -> dict[str, Any]:
        if self.info.index == "hnsw":
            return {"ef": int({**ANN_DEFAULTS["hnsw"], **self.info.extra}["ef_search"])}
        return {}


def _score(hit: Any, mode: str) -> float:
    score = float(hit["distance"])
    # milvus-lite reports BM25 relevance negated (smaller = better, as a distance); Milvus reports it positive
    return abs(score) if mode == "bm25" else score


def _document(row: Any) -> Document:
    return Document(
        id=str(row["doc_id"]), text=str(row["text"]), title=str(row["title"]), metadata=dict(row["metadata"] or {})
    )


class MilvusStore(Store):
    """Collections on a Milvus server at ``milvus://HOST:PORT`` (gRPC)."""

    def __init__(self, uri: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        pymilvus = _pymilvus()
        self.uri = uri
        address = "http://" + uri.removeprefix("milvus://")
        try:
            self.client = pymilvus.MilvusClient(uri=address, token=token or "", timeout=timeout)
        except pymilvus.MilvusException as exc:
            raise UserError(
                f"cannot connect to Milvus at {uri}: {exc.message}",
                hint="start it (e.g. `milvus-lite server --data-dir DIR --host 127.0.0.1 --port PORT`)",
            ) from None

    def _info(self, name: str) -> CollectionInfo | None:
        if not self.client.has_collection(name):
            return None
        properties = self.client.describe_collection(name).get("properties") or {}
        raw = properties.get(INFO_PROPERTY)
        if raw is None:
            raise UserError(
                f"Milvus collection {name!r} at {self.uri} was not created by llm-embedder",
                hint="choose another collection name",
            )
        return info_from_json(raw)

    def create_collection(self, info: CollectionInfo, *, exist_ok: bool = False) -> Collection:
        check_name(info.name)
        if info.index not in MILVUS_INDEXES:
            raise UserError(f"unknown index {info.index!r} for Milvus", hint=f"use {', '.join(MILVUS_INDEXES)}")
        if int(info.dim) <= 0 or not info.encoder or not info.task:
            raise UserError("a collection needs a task, an encoder fingerprint and a positive dim")
        existing = self._info(info.name)
        if existing is not None:
            if not exist_ok:
                raise UserError(f"collection {info.name!r} already exists in {self.uri}")
            if not same_settings(existing, info):
                raise UserError(
                    f"collection {info.name!r} exists with task {existing.task!r}, encoder {existing.encoder!r}, "
                    f"dim {existing.dim}, index {existing.index!r}",
                    hint="use the same settings or another collection name",
                )
            return MilvusCollection(self, existing)
        pymilvus = _pymilvus()
        DataType = pymilvus.DataType
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=2 * MAX_KEY + 16)
        schema.add_field("scope", DataType.VARCHAR, max_length=MAX_KEY, is_partition_key=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_KEY)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field(
            "content", DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True, analyzer_params=ANALYZER
        )
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(TYPED_FIELD, DataType.JSON)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(info.dim))
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            pymilvus.Function(
                name="bm25",
                function_type=pymilvus.FunctionType.BM25,
                input_field_names=["content"],
                output_field_names=["sparse"],
            )
        )
        index = self.client.prepare_index_params()
        if info.index == "hnsw":
            settings = {**ANN_DEFAULTS["hnsw"], **info.extra}
            index.add_index(
                "vector",
                index_type="HNSW",
                metric_type="IP",
                params={"M": int(settings["M"]), "efConstruction": int(settings["ef_construction"])},
            )
        else:
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self.client.create_collection(
            info.name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties={INFO_PROPERTY: info_to_json(info)},
        )
        properties = self.client.describe_collection(info.name).get("properties") or {}
        if INFO_PROPERTY not in properties:  # a server that ignores properties at creation: set them now
            self.client.alter_collection_properties(info.name, properties={INFO_PROPERTY: info_to_json(info)})
        return MilvusCollection(self, info)

    def collection(self, name: str) -> Collection:
        check_name(name)
        info = self._info(name)
        if info is None:
            known = ", ".join(i.name for i in self.list_collections()) or "none"
            raise UserError(f"no collection {name!r} in {self.uri} (known: {known})")
        state = str(self.client.get_load_state(name).get("state", ""))
        if not state.endswith("Loaded"):  # a restarted server keeps collections released until asked
            self.client.load_collection(name)
        return MilvusCollection(self, info)

    def list_collections(self) -> list[CollectionInfo]:
        out = []
        for name in sorted(self.client.list_collections()):
            properties = self.client.describe_collection(name).get("properties") or {}
            if INFO_PROPERTY in properties:
                out.append(info_from_json(properties[INFO_PROPERTY]))
        return out

    def drop_collection(self, name: str) -> None:
        check_name(name)
        if self._info(name) is not None:
            self.client.drop_collection(name)

    def close(self) -> None:
        self.client.close()
