"""The embedded store (the default): a folder holding one SQLite database, with faiss and bm25s as in-memory caches.

Layout::

    STORE_DIR/
      store.sqlite          collections, documents (id, scope, title, text, metadata, vector) - the truth
      store.sqlite-wal      SQLite's write-ahead log (part of the truth until checkpointed)

Why SQLite is the truth and faiss a cache: the contract promises that an acknowledged ``upsert``/``delete`` survives
kill -9 and that a half-written state never loads. SQLite in WAL mode with ``synchronous=FULL`` gives exactly that
(a transaction is fsync'ed to the log before ``commit`` returns; an interrupted one is rolled back when the file is
next opened) and it is in the standard library; writing our own log + snapshot files would re-implement it with
more ways to get it wrong. faiss (dense) and bm25s (lexical) indexes are derived data: they are rebuilt from the
database when a collection is first used in a process (a flat index of 100k x 384 vectors loads in about a second;
an HNSW/IVF index takes longer) and kept up to date in place by this process' own writes. A write by another
process is noticed (SQLite's ``data_version``) and the caches are rebuilt before the next read.

Search: ``dense`` is exact (faiss ``Flat``, inner product on unit vectors) unless the collection was created with
``index="hnsw"`` or ``index="ivf"``. Deleted or replaced documents stay in the faiss index as dead positions that
searches skip (faiss' ``IDSelectorBitmap``) until the dead outnumber a fifth of the positions, when the index is
rebuilt. A search restricted by a scope or filter to a small part of the collection (< :data:`EXACT_FRACTION`) is
computed exactly on the selected vectors, which is both faster and better than filtering inside an ANN graph.
``bm25`` statistics are computed per scope: one tenant's documents never change another tenant's ranking.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import SearchResult
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
from llm_embedder.retrieval.store.filters import matches, parse_filter

DB_NAME = "store.sqlite"
#: dense index settings an embedded collection accepts (``CollectionInfo.index``)
EMBEDDED_INDEXES = ("flat", "hnsw", "ivf")
#: below this fraction of the positions, a scoped/filtered dense search is computed exactly on the selected vectors
EXACT_FRACTION = 0.2
#: rebuild the faiss index when dead positions exceed this fraction
COMPACT_FRACTION = 0.2
#: candidates taken from each side before hybrid fusion
HYBRID_DEPTH = 100
#: default ANN settings (tuned in benchmarks/store.py: recall@10 >= 0.95 on 100k x 384)
ANN_DEFAULTS: dict[str, dict[str, int]] = {
    "hnsw": {"M": 32, "ef_construction": 100, "ef_search": 64},
    "ivf": {"nlist": 0, "nprobe": 8},  # nlist 0 = 4 * sqrt(n) at build time
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (collection, scope, id)
);
"""


def _faiss() -> Any:
    import faiss

    return faiss


class _DenseCache:
    """The in-memory view of one collection: positions (insertion order) -> seq, scope, id, metadata, vector."""

    def __init__(self, info: CollectionInfo) -> None:
        self.info = info
        self.seqs: list[int] = []
        self.scopes: list[str] = []
        self.ids: list[str] = []
        self.metadata: list[dict[str, Any]] = []
        self.alive: list[bool] = []
        self._buffer = np.zeros((0, info.dim), dtype=np.float32)  # capacity doubles: appends stay amortised O(1)
        self.by_scope: dict[str, list[int]] = {}  # scope -> its positions (live and dead)
        self.where: dict[tuple[str, str], int] = {}  # (scope, id) -> live position
        self.scope_live: dict[str, int] = {}
        self.dead = 0
        self.index: Any = None  # faiss index over positions 0..n-1
        self.bm25: dict[str, Any] = {}  # scope -> (positions, BM25Retriever | None)

    @property
    def n(self) -> int:
        return len(self.seqs)

    @property
    def vectors(self) -> np.ndarray:
        return self._buffer[: self.n]

    def append(self, rows: list[tuple[int, str, str, dict[str, Any]]], vectors: np.ndarray) -> None:
        start = self.n
        for offset, (seq, scope, doc_id, meta) in enumerate(rows):
            self.seqs.append(seq)
            self.scopes.append(scope)
            self.ids.append(doc_id)
            self.metadata.append(meta)
            self.alive.append(True)
            self.where[(scope, doc_id)] = start + offset
            self.by_scope.setdefault(scope, []).append(start + offset)
            self.scope_live[scope] = self.scope_live.get(scope, 0) + 1
            self.bm25.pop(scope, None)
        if self.n > len(self._buffer):
            grown = np.zeros((max(self.n, 2 * len(self._buffer), 1024), self.info.dim), dtype=np.float32)
            grown[:start] = self._buffer[:start]
            self._buffer = grown
        self._buffer[start : self.n] = vectors
        if self.index is not None and len(rows):
            if self.index.is_trained:
                self.index.add(vectors)
            else:
                self.index = None  # rebuilt (and trained) at the next search

    def kill(self, scope: str, doc_id: str) -> None:
        pos = self.where.pop((scope, doc_id), None)
        if pos is not None:
            self.alive[pos] = False
            self.dead += 1
            self.scope_live[scope] -= 1
            self.bm25.pop(scope, None)

    # ---------------------------------------------------------------- faiss
    def build_index(self) -> None:
        """(Re)build faiss over the live positions, dropping dead ones (positions are renumbered)."""
        faiss = _faiss()
        if self.dead:
            keep = [i for i, a in enumerate(self.alive) if a]
            self._buffer = np.ascontiguousarray(self.vectors[keep])
            self.seqs = [self.seqs[i] for i in keep]
            self.scopes = [self.scopes[i] for i in keep]
            self.ids = [self.ids[i] for i in keep]
            self.metadata = [self.metadata[i] for i in keep]
            self.alive = [True] * len(keep)
            self.where = {(s, d): i for i, (s, d) in enumerate(zip(self.scopes, self.ids, strict=True))}
            self.by_scope = {}
            for i, s in enumerate(self.scopes):
                self.by_scope.setdefault(s, []).append(i)
            self.dead = 0
            self.bm25.clear()
        kind = self.info.index
        settings = {**ANN_DEFAULTS.get(kind, {}), **self.info.extra}
        dim = self.info.dim
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(settings["M"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(settings["ef_construction"])
            index.hnsw.efSearch = int(settings["ef_search"])
        elif kind == "ivf" and self.n >= 1000:
            nlist = int(settings["nlist"]) or int(max(1, min(4 * np.sqrt(self.n), self.n // 39)))
            # L2 on unit vectors ranks as inner product does, and k-means centroids are not unit vectors: assigning
            # by inner product would favour long centroids (recall 0.75 at nprobe 16 measured, vs 0.99 with L2)
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
            index.train(self.vectors[np.random.default_rng(0).permutation(self.n)[: min(self.n, 256 * nlist)]])
            index.nprobe = int(settings["nprobe"])
        else:  # flat, or ivf with too few vectors to train (exact until it grows)
            index = faiss.IndexFlatIP(dim)
        if self.n:
            index.add(self.vectors)
        self.index = index

    def maybe_compact(self) -> None:
        if self.dead > COMPACT_FRACTION * max(self.n, 1):
            self.build_index()

    def live(self, scope: str) -> list[int]:
        """Live positions of ``scope``, in insertion order."""
        alive = self.alive
        return [i for i in self.by_scope.get(scope, ()) if alive[i]]

    def selection(self, scope: str, conditions: tuple[Any, ...]) -> np.ndarray | None:
        """Live positions of ``scope`` matching the filter; ``None`` means every position (no selector needed)."""
        if not conditions and self.dead == 0 and self.scope_live.get(scope, 0) == self.n:
            return None
        meta = self.metadata
        positions = [i for i in self.live(scope) if not conditions or matches(meta[i], conditions)]
        return np.asarray(positions, dtype=np.int64)

    def dense(self, queries: np.ndarray, k: int, selected: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """Top-k (position, score) per query; exact unless the index is approximate and the selection large."""
        faiss = _faiss()
        n_sel = self.n if selected is None else len(selected)
        if n_sel == 0:
            return [[] for _ in range(len(queries))]
        exact_here = selected is not None and (self.info.index == "flat" or n_sel < EXACT_FRACTION * self.n)
        if exact_here:
            scores = queries @ self.vectors[selected].T
            out = []
            for row in scores:
                top = _top_k(row, min(k, n_sel), self.seqs, selected)
                out.append([(int(selected[j]), float(row[j])) for j in top])
            return out
        if self.index is None:
            self.build_index()
        kk = min(k, n_sel)
        if selected is None:
            scores, positions = self.index.search(queries, kk)
        else:
            bitmap = np.zeros(self.n, dtype=bool)
            bitmap[selected] = True
            packed = np.packbits(bitmap, bitorder="little")
            selector = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(packed))
            if self.info.index == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.index.hnsw.efSearch))
            elif isinstance(self.index, faiss.IndexIVF):
                params = faiss.SearchParametersIVF(sel=selector, nprobe=int(self.index.nprobe))
            else:
                params = faiss.SearchParameters(sel=selector)
            scores, positions = self.index.search(queries, kk, params=params)
        if self.index.metric_type == faiss.METRIC_L2:  # |q - x|^2 = 2 - 2 q.x for unit q, x: report q.x
            scores = 1.0 - scores / 2.0
        out = []
        for srow, prow in zip(scores, positions, strict=True):
            hits = [(int(p), float(s)) for p, s in zip(prow, srow, strict=True) if p >= 0]
            hits.sort(key=lambda h: (-h[1], self.seqs[h[0]]))
            out.append(hits)
        return out


def _top_k(scores: np.ndarray, k: int, seqs: list[int], positions: np.ndarray | None = None) -> list[int]:
    """Indices of the k best scores, ties by insertion order (seq)."""
    n = len(scores)
    if k >= n:
        cand = np.arange(n)
    else:
        part = np.argpartition(-scores, k - 1)[:k]
        cand = np.flatnonzero(scores >= scores[part].min())
    pos = cand if positions is None else positions[cand]
    order = np.lexsort((np.asarray([seqs[p] for p in pos], dtype=np.int64), -scores[cand]))
    return cand[order][:k].tolist()


class EmbeddedCollection(Collection):
    """A collection of an :class:`EmbeddedStore` (see the module docstring)."""

    def __init__(self, store: EmbeddedStore, info: CollectionInfo) -> None:
        self.store = store
        self.info = info
        self._cache: _DenseCache | None = None

    def tune(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Trade recall for speed at query time in this process (HNSW ``ef_search``, IVF ``nprobe``)."""
        extra = dict(self.info.extra)
        if ef_search is not None:
            extra["ef_search"] = int(ef_search)
        if nprobe is not None:
            extra["nprobe"] = int(nprobe)
        self.info = replace(self.info, extra=extra)
        with self.store._lock:
            cache = self._view()
            cache.info = self.info
            index = cache.index
            if index is None:
                return
            if ef_search is not None and hasattr(index, "hnsw"):
                index.hnsw.efSearch = int(ef_search)
            if nprobe is not None and hasattr(index, "nprobe"):
                index.nprobe = int(nprobe)

    # ---------------------------------------------------------------- cache
    def _view(self) -> _DenseCache:
        self.store._refresh()
        if self._cache is None:
            cache = _DenseCache(self.info)
            rows = self.store._db.execute(
                "SELECT seq, scope, id, metadata, vector FROM documents WHERE collection = ? ORDER BY seq",
                (self.info.name,),
            ).fetchall()
            if rows:
                vectors = np.frombuffer(b"".join(r[4] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                cache.append([(r[0], r[1], r[2], json.loads(r[3])) for r in rows], vectors)
            self._cache = cache
        return self._cache

    def _documents(self, seqs: Sequence[int]) -> dict[int, Document]:
        out: dict[int, Document] = {}
        seqs = list(seqs)
        for lo in range(0, len(seqs), 500):
            chunk = seqs[lo : lo + 500]
            marks = ",".join("?" * len(chunk))
            for seq, doc_id, title, text, meta in self.store._db.execute(
                f"SELECT seq, id, title, text, metadata FROM documents WHERE seq IN ({marks})", chunk
            ):
                out[seq] = Document(id=doc_id, text=text, title=title, metadata=json.loads(meta))
        return out

    # ---------------------------------------------------------------- writes
    def upsert(
        self, documents: Sequence[Document], vectors: np.ndarray, *, encoder: str, scope: str = DEFAULT_SCOPE
    ) -> list[str]:
        scope = check_scope(scope)
        docs = check_documents(documents)
        array = check_vectors(self.info, vectors, encoder, len(docs), "the vectors")
        with self.store._lock:
            cache = self._view()
            db = self.store._db
            rows = []
            with db:  # one transaction: all or nothing, fsync'ed at commit
                for doc, vec in zip(docs, array, strict=True):
                    db.execute(
                        "DELETE FROM documents WHERE collection = ? AND scope = ? AND id = ?",
                        (self.info.name, scope, doc.id),
                    )
                    cur = db.execute(
                        "INSERT INTO documents (collection, scope, id, title, text, metadata, vector) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            self.info.name,
                            scope,
                            doc.id,
                            doc.title,
                            doc.text,
                            json.dumps(doc.metadata, ensure_ascii=False),
                            vec.tobytes(),
                        ),
                    )
                    rows.append((int(cur.lastrowid), scope, doc.id, dict(doc.metadata)))
            self.store._seen_own_write()
            for _, _, doc_id, _ in rows:
                cache.kill(scope, doc_id)
            cache.append(rows, array)
        return [d.id for d in docs]

    def delete(
        self, *, scope: str = DEFAULT_SCOPE, ids: Sequence[str] | None = None, filter: Filter | None = None
    ) -> int:
        scope = check_scope(scope)
        check_delete_selector(ids, filter)
        conditions = parse_filter(filter)
        with self.store._lock:
            cache = self._view()
            if ids:
                wanted = {str(i) for i in ids}
                targets = [i for i in wanted if (scope, i) in cache.where]
            else:
                targets = [cache.ids[p] for p in cache.live(scope)]
            if conditions:
                targets = [i for i in targets if matches(cache.metadata[cache.where[(scope, i)]], conditions)]
            if not targets:
                return 0
            db = self.store._db
            with db:
                db.executemany(
                    "DELETE FROM documents WHERE collection = ? AND scope = ? AND id = ?",
                    [(self.info.name, scope, i) for i in targets],
                )
            self.store._seen_own_write()
            for i in targets:
                cache.kill(scope, i)
            return len(targets)

    # ---------------------------------------------------------------- reads
    def get(self, ids: Sequence[str], *, scope: str = DEFAULT_SCOPE) -> list[Document | None]:
        scope = check_scope(scope)
        with self.store._lock:
            cache = self._view()
            seqs = [cache.seqs[p] if (p := cache.where.get((scope, str(i)))) is not None else None for i in ids]
            docs = self._documents([s for s in seqs if s is not None])
            return [None if s is None else docs.get(s) for s in seqs]

    def count(self, *, scope: str | None = DEFAULT_SCOPE) -> int:
        with self.store._lock:
            cache = self._view()
            if scope is None:
                return sum(cache.scope_live.values())
            return cache.scope_live.get(check_scope(scope), 0)

    def scan(self, *, batch_size: int = 512) -> Iterator[tuple[str, list[Document], np.ndarray]]:
        # pages in insertion order (seq), read under the lock one page at a time; a page holding several scopes
        # is yielded as one batch per scope
        last = -1
        while True:
            with self.store._lock:
                rows = self.store._db.execute(
                    "SELECT seq, scope, id, title, text, metadata, vector FROM documents "
                    "WHERE collection = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (self.info.name, last, int(batch_size)),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for scope in dict.fromkeys(r[1] for r in rows):
                part = [r for r in rows if r[1] == scope]
                docs = [Document(id=r[2], title=r[3], text=r[4], metadata=json.loads(r[5])) for r in part]
                vectors = np.frombuffer(b"".join(r[6] for r in part), dtype=np.float32).reshape(len(part), -1)
                yield scope, docs, vectors.copy()

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
        n = len(queries) if queries is not None else len(texts or [])
        if queries is not None and texts is not None and mode == "hybrid" and len(texts) != n:
            raise UserError(f"{n} query vectors but {len(texts)} query texts")
        conditions = parse_filter(filter)
        k = int(k)
        with self.store._lock:
            cache = self._view()
            cache.maybe_compact()
            selected = cache.selection(scope, conditions)
            if selected is not None and len(selected) == 0:
                return [[] for _ in range(n)]
            if mode == "dense":
                ranked = cache.dense(queries, k, selected)  # type: ignore[arg-type]
            elif mode == "bm25":
                ranked = self._bm25(cache, scope, list(texts or []), k, conditions)
            else:
                depth = max(k, HYBRID_DEPTH)
                dense = cache.dense(queries, depth, selected)  # type: ignore[arg-type]
                sparse = self._bm25(cache, scope, list(texts or []), depth, conditions)
                ranked = _fuse(cache, dense, sparse, k)
            docs = self._documents({cache.seqs[p] for hits in ranked for p, _ in hits})
            return [[Hit(docs[cache.seqs[p]], score) for p, score in hits[:k]] for hits in ranked]

    def _bm25(
        self, cache: _DenseCache, scope: str, texts: list[str], k: int, conditions: tuple[Any, ...]
    ) -> list[list[tuple[int, float]]]:
        """Top-k (position, BM25 score) per query over the scope's documents (statistics of the scope only)."""
        entry = cache.bm25.get(scope)
        if entry is None:
            positions = np.asarray(cache.live(scope), dtype=np.int64)
            retriever = None
            if len(positions):
                from llm_embedder.retrieval.bm25 import BM25Retriever

                docs = self._documents([cache.seqs[p] for p in positions])
                keys = [_bm25_text(docs[cache.seqs[p]]) for p in positions]
                retriever = BM25Retriever(keys)
            entry = cache.bm25[scope] = (positions, retriever)
        positions, retriever = entry
        if retriever is None:
            return [[] for _ in texts]
        mask = None
        if conditions:
            mask = np.asarray([matches(cache.metadata[p], conditions) for p in positions], dtype=bool)
        out = []
        for query in texts:
            scores = retriever.scores(query)
            keep = scores > 0
            if mask is not None:
                keep &= mask
            cand = np.flatnonzero(keep)
            top = _top_k(scores[cand], min(k, len(cand)), cache.seqs, positions[cand]) if len(cand) else []
            out.append([(int(positions[cand[j]]), float(scores[cand[j]])) for j in top])
        return out


def _bm25_text(doc: Document) -> str:
    return f"{doc.title} {doc.text}".strip()


def _fuse(
    cache: _DenseCache, dense: list[list[tuple[int, float]]], sparse: list[list[tuple[int, float]]], k: int
) -> list[list[tuple[int, float]]]:
    """RRF of dense and BM25 hits (by seq, so ties fall to insertion order), back to positions."""
    from llm_embedder.retrieval.fusion import reciprocal_rank_fusion
    from llm_embedder.retrieval.ranking import pad_result

    def as_result(ranked: list[list[tuple[int, float]]]) -> SearchResult:
        depth = max([len(h) for h in ranked] + [1])
        return pad_result([[cache.seqs[p] for p, _ in h] for h in ranked], [[s for _, s in h] for h in ranked], depth)

    fused = reciprocal_rank_fusion([as_result(dense), as_result(sparse)], k)
    position_of = {cache.seqs[p]: p for hits in (*dense, *sparse) for p, _ in hits}
    return [[(position_of[seq], score) for seq, score in fused.hits(i)] for i in range(len(dense))]


class EmbeddedStore(Store):
    """A folder store (see the module docstring). ``EmbeddedStore(path)`` creates the folder if needed."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self.uri = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, expected a store folder")
        file = self.path / DB_NAME
        if not file.is_file():
            if not create:
                raise UserError(f"{self.path} is not a store (no {DB_NAME})", hint="create it by writing to it")
            if self.path.is_dir() and any(p for p in self.path.iterdir() if not p.name.startswith(DB_NAME)):
                raise UserError(
                    f"{self.path} exists and is not a store folder", hint="choose an empty or new folder for a store"
                )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(file, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{file}: cannot open the store database ({exc})") from None
        except OSError as exc:
            raise UserError(f"{self.path}: cannot create the store folder ({exc.strerror})") from None
        self._db.isolation_level = "DEFERRED"  # `with db:` = one transaction
        self._lock = threading.RLock()
        self._collections: dict[str, EmbeddedCollection] = {}
        self._version = self._data_version()

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _seen_own_write(self) -> None:
        self._version = self._data_version()  # our own commits do not change it; kept for clarity

    def _refresh(self) -> None:
        """Drop the caches when another process committed since we last looked."""
        version = self._data_version()
        if version != self._version:
            self._version = version
            for collection in self._collections.values():
                collection._cache = None

    def _info(self, name: str) -> CollectionInfo | None:
        with self._lock:  # one connection shared by threads: every statement under the store's lock
            row = self._db.execute("SELECT info FROM collections WHERE name = ?", (name,)).fetchone()
        return None if row is None else info_from_json(row[0])

    def create_collection(self, info: CollectionInfo, *, exist_ok: bool = False) -> Collection:
        check_name(info.name)
        if info.index not in EMBEDDED_INDEXES:
            raise UserError(f"unknown index {info.index!r} for the embedded store", hint=f"use {EMBEDDED_INDEXES}")
        if int(info.dim) <= 0 or not info.encoder or not info.task:
            raise UserError("a collection needs a task, an encoder fingerprint and a positive dim")
        with self._lock:
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
                return self.collection(info.name)
            with self._db:
                self._db.execute("INSERT INTO collections (name, info) VALUES (?, ?)", (info.name, info_to_json(info)))
            return self.collection(info.name)

    def collection(self, name: str) -> Collection:
        with self._lock:
            self._refresh()
            if name in self._collections:
                return self._collections[name]
            info = self._info(name)
            if info is None:
                known = ", ".join(i.name for i in self.list_collections()) or "none"
                raise UserError(f"no collection {name!r} in {self.uri} (known: {known})")
            self._collections[name] = EmbeddedCollection(self, info)
            return self._collections[name]

    def list_collections(self) -> list[CollectionInfo]:
        with self._lock:
            rows = self._db.execute("SELECT info FROM collections ORDER BY name").fetchall()
        return [info_from_json(r[0]) for r in rows]

    def drop_collection(self, name: str) -> None:
        with self._lock:
            with self._db:
                self._db.execute("DELETE FROM documents WHERE collection = ?", (name,))
                self._db.execute("DELETE FROM collections WHERE name = ?", (name,))
            self._collections.pop(name, None)

    def close(self) -> None:
        with self._lock:
            self._collections.clear()
            self._db.close()
