"""Re-encode a store's collections with another encoder - e.g. the model just fine-tuned on the service's own
feedback log - so the service can serve it: a collection refuses vectors of an encoder other than the one it was
written with, and its documents' texts are all a new encoder needs.

Two phases per collection ``NAME``, each a full copy, so a kill at any moment loses nothing and a rerun finishes:

1. every document of every scope is read back (:meth:`Collection.scan`), its key rendered with the task's key
   template and encoded, and written to ``NAME__reindex`` (created with the new encoder's fingerprint and
   dimension, the same task and index); when its count equals the original's, ``NAME`` is dropped;
2. ``NAME`` is created again with the new encoder and filled from ``NAME__reindex`` (vectors copied, not
   re-encoded); when the counts agree, ``NAME__reindex`` is dropped.

What a rerun finds tells it where it stopped: ``NAME`` with the old encoder -> phase 1 from scratch (a partial
staging copy is dropped); ``NAME__reindex`` with the new encoder and ``NAME`` missing or partial -> phase 2 from
scratch; ``NAME`` with the new encoder alone -> nothing to do. A staging copy made by ANOTHER model past its phase
1 can only be finished by that model: refused with one line, nothing dropped. Stop the server first: during phase 2
the collection is incomplete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.retrieval.store.base import Store
from llm_embedder.retrieval.store.checks import check_name
from llm_embedder.tasks.registry import TASKS, TaskRegistry

STAGING_SUFFIX = "__reindex"


@dataclass(frozen=True)
class ReindexResult:
    """What :func:`reindex_collection` did to one collection."""

    name: str
    documents: int
    #: the encoder fingerprint the collection had before ("" when a rerun found only the staging copy)
    old_encoder: str
    new_encoder: str
    #: False when the collection already held the new encoder's vectors
    changed: bool


def staging_name(name: str) -> str:
    return check_name(name + STAGING_SUFFIX)


def reindex_collection(
    store: Store,
    name: str,
    embedder: Any,
    *,
    tasks: TaskRegistry = TASKS,
    batch_size: int = 256,
    say: Callable[[str], None] | None = None,
) -> ReindexResult:
    """Re-encode collection ``name`` of ``store`` with ``embedder`` (anything with ``fingerprint``, ``dim`` and
    ``encode(texts, task=, side=)``); rerun it after an interruption to finish (see the module docstring)."""
    check_name(name)
    staging = staging_name(name)
    infos = {info.name: info for info in store.list_collections()}
    current, copy = infos.get(name), infos.get(staging)
    if current is None and copy is None:
        known = ", ".join(sorted(n for n in infos if not n.endswith(STAGING_SUFFIX))) or "none"
        raise UserError(f"no collection {name!r} in {store.uri} (known: {known})")
    new = (str(embedder.fingerprint), int(embedder.dim))
    new_encoder = new[0]
    if current is not None and copy is None and (current.encoder, current.dim) == new:
        return ReindexResult(name, store.collection(name).count(scope=None), current.encoder, new_encoder, False)
    if copy is not None and (copy.encoder, copy.dim) != new:
        if current is None or (current.encoder, current.dim) == (copy.encoder, copy.dim):
            # a run with another model got past phase 1: NAME is gone or half rebuilt, its copy is the only whole one
            raise UserError(
                f"an interrupted reindex of {name!r} to {copy.encoder} must be finished first",
                hint="rerun it with that model, then with this one",
            )
        # that run stopped in phase 1 (NAME still holds the old vectors): its partial copy is dropped below
    old_encoder = "" if current is None else current.encoder
    if current is not None and (current.encoder, current.dim) != new:
        # phase 1: encode every document into the staging copy
        if copy is not None:
            store.drop_collection(staging)
        copy = replace(current, name=staging, encoder=new_encoder, dim=new[1])
        spec = tasks.get(current.task)
        source, target = store.collection(name), store.create_collection(copy)
        for scope, documents, _ in source.scan(batch_size=batch_size):
            keys = [d.key(spec.key_template) for d in documents]
            vectors = embedder.encode(keys, task=spec.name, side="key", show_progress_bar=False)
            target.upsert(documents, vectors, encoder=new_encoder, scope=scope)
        encoded = target.count(scope=None)
        _same_count(source.count(scope=None), encoded, name, staging)
        if say is not None:
            say(f"{name}: {encoded} documents encoded into {staging}")
        store.drop_collection(name)
        current = None
    assert copy is not None
    # phase 2: the collection again, under its own name, from the staging copy
    if current is not None:
        store.drop_collection(name)
    source, target = store.collection(staging), store.create_collection(replace(copy, name=name))
    for scope, documents, vectors in source.scan(batch_size=batch_size):
        target.upsert(documents, vectors, encoder=new_encoder, scope=scope)
    count = target.count(scope=None)
    _same_count(source.count(scope=None), count, staging, name)
    store.drop_collection(staging)
    return ReindexResult(name, count, old_encoder, new_encoder, True)


def _same_count(expected: int, got: int, source: str, target: str) -> None:
    if expected != got:  # never drop a collection whose copy is short
        raise UserError(
            f"copying {source} to {target} gave {got} documents instead of {expected}",
            hint="nothing was dropped; rerun the command",
        )
