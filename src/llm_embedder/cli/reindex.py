"""``llm-embedder reindex``: re-encode the collections of a service's store with another encoder, so
``llm-embedder serve --model NEW`` can serve them - e.g. after ``score`` + ``train`` on the feedback log.

    llm-embedder reindex --data-dir DIR --model runs/tuned                 # every collection, memory included
    llm-embedder reindex --store milvus://127.0.0.1:19530 --model runs/tuned --collection kb

Stop the server first: with ``--data-dir`` this is enforced (the folder's lock: reindex is refused while a server
runs on it, and a server refused while reindex runs); with ``--store`` alone, stop every server on that store
yourself. Each collection is copied twice (re-encoded into ``NAME__reindex``, then back under its own
name), so a kill loses nothing: run the same command again to finish. ``--backend``, ``--instructions`` and
``--model`` must be what ``serve`` will be started with (the store records the encoder's identity).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from llm_embedder.cli.common import (
    add_service_arguments,
    add_tasks_file_argument,
    instructions_flag,
    load_tasks_file,
)
from llm_embedder.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reindex",
        help="re-encode a service's store with another encoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_service_arguments(parser, data_dir_required=False)
    parser.add_argument(
        "--collection", action="append", default=None, metavar="NAME", help="only this collection (repeatable)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="documents read, encoded and written at a time")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data_dir is None and args.store is None:
        raise UserError("give --data-dir (or --store)", hint="the same as `llm-embedder serve` was given")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    uri = args.store or str(Path(args.data_dir) / "store")
    load_tasks_file(args)
    from llm_embedder.serving.service import hold_data_dir

    with contextlib.ExitStack() as held:
        if args.data_dir is not None and Path(args.data_dir).is_dir():
            # no server may write to the store meanwhile: a write it acknowledged would be lost in the rebuild
            held.enter_context(hold_data_dir(args.data_dir))
        return _reindex(args, uri)


def _reindex(args: argparse.Namespace, uri: str) -> int:
    from llm_embedder.model.embedder import LLMEmbedder
    from llm_embedder.retrieval.store import open_store
    from llm_embedder.retrieval.store.reindex import STAGING_SUFFIX, reindex_collection
    from llm_embedder.serving.service import serving_backend

    # an existing store only: a mistyped folder must not become a new, empty one
    store = open_store(uri) if "://" in uri else open_store(uri, create=False)
    try:
        names = args.collection or sorted({info.name.removesuffix(STAGING_SUFFIX) for info in store.list_collections()})
        embedder = LLMEmbedder(
            args.model,
            device=args.device,
            backend=serving_backend(args.backend, args.device),  # type: ignore[arg-type]
            use_instructions=instructions_flag(args),
        )
        for name in names:
            result = reindex_collection(
                store, name, embedder, batch_size=args.batch_size, say=lambda line: print(line, file=sys.stderr)
            )
            if result.changed:
                before = result.old_encoder or "(an interrupted run's copy)"
                print(f"{name}: {result.documents} documents re-encoded ({before} -> {result.new_encoder})")
            else:
                print(f"{name}: {result.documents} documents, already encoded by {result.new_encoder}")
    finally:
        store.close()
    return 0
