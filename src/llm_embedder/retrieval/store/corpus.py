"""A corpus file in a store collection: what ``llm-embedder index CORPUS -o milvus://HOST:PORT/NAME`` does, and the
retriever that searches such a collection by corpus row.

Each corpus row becomes one document: id = the row number (as a string), text = the row rendered with the task's key
template (what was encoded, and what BM25 reads), metadata ``{"row": row}``. The collection records the encoder
(its fingerprint, and the settings needed to rebuild the query encoder) and the corpus fingerprint, so a search
re-creates the matching query encoder and an index run over another corpus is refused. Runs resume: rows already in
the collection are skipped (upserts are idempotent, so a run killed mid-batch repeats at most one batch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.retrieval.store.base import DEFAULT_SCOPE, Collection, CollectionInfo, Document, SearchMode, Store

#: rows encoded and written per step (the resume unit)
STEP = 1024


def index_corpus(
    corpus: str | os.PathLike[str],
    store: Store,
    name: str,
    *,
    embedder: Any,
    task: str,
    key_template: str | None = None,
    index: str = "flat",
    overwrite: bool = False,
    batch_size: int | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> CollectionInfo:
    """Encode the rows of ``corpus`` into the collection ``name`` of ``store`` (created if needed)."""
    from tqdm.auto import tqdm

    from llm_embedder.retrieval.corpus_file import read_corpus_rows, scan_corpus
    from llm_embedder.retrieval.dense import _encoder_section, _render_keys
    from llm_embedder.utils.templates import template_fields

    spec = embedder.task(task)
    key_template = key_template or spec.key_template
    template_fields(key_template)
    scan = scan_corpus(corpus)
    corpus_info = {**scan.fingerprint(), "key_template": key_template}
    info = CollectionInfo(
        name=name,
        task=spec.name,
        encoder=embedder.fingerprint,
        dim=int(embedder.dim),
        index=index,
        extra={"encoder": _encoder_section(embedder, spec, key_template), "corpus": corpus_info},
    )
    existing = {i.name: i for i in store.list_collections()}.get(name)
    if existing is not None and overwrite:
        log(f"dropping collection {name!r} (--overwrite)")
        store.drop_collection(name)
        existing = None
    if existing is not None:
        old = existing.extra.get("corpus") or {}
        if (old.get("sha256"), old.get("key_template")) != (scan.sha256, key_template):
            raise UserError(
                f"collection {name!r} in {store.uri} was built from another corpus or key template "
                f"(checksum {str(old.get('sha256'))[:16]}, now {scan.sha256[:16]})",
                hint="pass --overwrite to rebuild it, or choose another collection name",
            )
    collection = store.create_collection(info, exist_ok=True)
    done = collection.count()
    if done == scan.rows:
        log(f"collection {name!r} is up to date ({scan.rows} rows)")
        return collection.info
    if done:
        log(f"resuming: {done} of {scan.rows} rows already in collection {name!r}")
    with tqdm(total=scan.rows, initial=0, desc="indexing", unit="row", disable=not show_progress) as bar:
        for lo in range(0, scan.rows, STEP):
            hi = min(lo + STEP, scan.rows)
            ids = [str(r) for r in range(lo, hi)]
            missing = [r for r, doc in zip(range(lo, hi), collection.get(ids), strict=True) if doc is None]
            if missing:
                rows = read_corpus_rows(scan, lo, hi)
                keys = _render_keys(rows, key_template, scan, lo)
                chosen = [r - lo for r in missing]
                vectors = embedder.encode_keys(
                    [keys[j] for j in chosen], task=spec.name, batch_size=batch_size, show_progress_bar=False
                )
                docs = [Document(id=str(lo + j), text=keys[j], metadata={"row": lo + j}) for j in chosen]
                collection.upsert(docs, vectors, encoder=info.encoder)
            bar.update(hi - lo)
    return collection.info


class CollectionRetriever:
    """Search a collection written by :func:`index_corpus` by corpus row (a :class:`~llm_embedder.retrieval.base.
    Retriever`): queries are encoded with the recorded query encoder; ``mode`` is dense, bm25 or hybrid."""

    def __init__(
        self,
        collection: Collection,
        *,
        mode: SearchMode = "dense",
        embedder: Any | None = None,
        scope: str = DEFAULT_SCOPE,
        name: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.collection = collection
        self.mode = mode
        self.embedder = embedder
        self.scope = scope
        self.name = name or mode
        self.batch_size = batch_size
        if mode != "bm25" and embedder is None:
            raise UserError(f"{mode} search needs the query encoder")
        if embedder is not None and embedder.fingerprint != collection.info.encoder:
            raise UserError(
                f"collection {collection.info.name!r} was built with encoder {collection.info.encoder!r}, "
                f"the query encoder is {embedder.fingerprint!r}",
                hint="search with the encoder that built it (leave out --model)",
            )

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult:
        if isinstance(queries, str):
            queries = [queries]
        queries = list(queries)
        vectors = None
        if self.mode != "bm25":
            vectors = self.embedder.encode_queries(  # type: ignore[union-attr]
                queries, task=self.collection.info.task, batch_size=self.batch_size
            )
        hits = self.collection.search_many(
            vectors=vectors,
            texts=queries if self.mode != "dense" else None,
            encoder=self.collection.info.encoder,
            k=k,
            mode=self.mode,
            scope=self.scope,
        )
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for i, row in enumerate(hits):
            for j, hit in enumerate(row[:k]):
                ids[i, j] = int(hit.document.metadata.get("row", hit.id))
                scores[i, j] = hit.score
        return SearchResult(ids=ids, scores=scores)
