"""A throw-away in-memory store for the service tests until the embedded store lands (dense search only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.store.base import Collection, CollectionInfo, Document, Hit, Store

_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
}


def _matches(metadata: dict[str, Any], filter: dict[str, Any] | None) -> bool:
    for name, cond in (filter or {}).items():
        if name not in metadata:
            return False
        conds = cond if isinstance(cond, dict) else {"$eq": cond}
        if not all(_OPS[op](metadata[name], value) for op, value in conds.items()):
            return False
    return True


class FakeCollection(Collection):
    def __init__(self, info: CollectionInfo) -> None:
        self.info = info
        self.rows: dict[tuple[str, str], tuple[Document, np.ndarray, int]] = {}
        self.serial = 0

    def upsert(self, documents, vectors, *, encoder, scope=""):  # type: ignore[no-untyped-def]
        assert encoder == self.info.encoder
        for doc, vec in zip(documents, vectors, strict=True):
            self.serial += 1
            self.rows[(scope, doc.id)] = (doc, np.asarray(vec), self.serial)
        return [d.id for d in documents]

    def delete(self, *, scope="", ids=None, filter=None):  # type: ignore[no-untyped-def]
        if not ids and not filter:
            raise UserError("empty selector")
        gone = [
            key
            for key, (doc, _, _) in self.rows.items()
            if key[0] == scope and (not ids or doc.id in ids) and _matches(doc.metadata, filter)
        ]
        for key in gone:
            del self.rows[key]
        return len(gone)

    def get(self, ids: Sequence[str], *, scope: str = "") -> list[Document | None]:
        return [self.rows[(scope, i)][0] if (scope, i) in self.rows else None for i in ids]

    def count(self, *, scope: str | None = "") -> int:
        return sum(1 for key in self.rows if scope is None or key[0] == scope)

    def search(self, *, vector=None, text=None, encoder=None, k=10, mode="dense", filter=None, scope=""):  # type: ignore[no-untyped-def]
        rows = [r for key, r in self.rows.items() if key[0] == scope and _matches(r[0].metadata, filter)]
        scored = sorted(rows, key=lambda r: (-float(r[1] @ vector), r[2]))
        return [Hit(doc, float(vec @ vector)) for doc, vec, _ in scored[:k]]


class FakeStore(Store):
    uri = "memory://"

    def __init__(self) -> None:
        self.collections: dict[str, FakeCollection] = {}

    def create_collection(self, info: CollectionInfo, *, exist_ok: bool = False) -> Collection:
        if info.name in self.collections:
            if not exist_ok:
                raise UserError(f"collection {info.name} exists")
            return self.collections[info.name]
        self.collections[info.name] = FakeCollection(info)
        return self.collections[info.name]

    def collection(self, name: str) -> Collection:
        return self.collections[name]

    def list_collections(self) -> list[CollectionInfo]:
        return [c.info for c in self.collections.values()]

    def drop_collection(self, name: str) -> None:
        del self.collections[name]
