"""``llm-embedder index``: build a persistent search index over a corpus (JSON lines, one row per line).

``-o`` is an index folder (faiss + optional BM25, the embedded default) or a Milvus collection
``milvus://HOST:PORT/COLLECTION`` (dense vectors plus Milvus' own BM25; ``--index-type flat`` or ``hnsw``).

The keys are the corpus rows rendered with the task's key template (``--key-template`` to change it) and encoded
with the task's key instruction. The folder also records the encoder, task and template, so ``llm-embedder
search INDEX_DIR "query"`` re-creates the matching query encoder. Builds are resumable (finished shards of
embeddings are kept in a hidden ``.INDEX_DIR.partial`` folder; rerun the same command after an interruption) and
atomic (the folder appears complete or not at all).
"""

from __future__ import annotations

import argparse

from llm_embedder.cli.common import add_encoder_arguments, add_tasks_file_argument, instructions_flag, load_tasks_file
from llm_embedder.errors import UserError
from llm_embedder.retrieval.index import INDEX_TYPES, IndexParams


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="build a dense (faiss) and/or BM25 index over a corpus", description=__doc__)
    parser.add_argument("corpus", metavar="CORPUS", help="corpus JSON-lines file (row number = id; .gz accepted)")
    parser.add_argument(
        "-o", "--output", required=True, metavar="URI", help="index folder, or milvus://HOST:PORT/COLLECTION"
    )
    parser.add_argument("--task", required=True, help="task whose key instruction and key template are used")
    parser.add_argument("--key-template", default=None, help="how a row becomes a key, e.g. '{title} {text}'")
    parser.add_argument(
        "--index-type",
        default="flat",
        metavar="TYPE",
        help=f"{' | '.join(INDEX_TYPES)} | none (BM25 only) | a faiss index_factory string (default: flat, exact)",
    )
    parser.add_argument("--bm25", action="store_true", help="also build a BM25 index (for bm25/hybrid search)")
    parser.add_argument("--bm25-stemmer", default="english", help="Snowball stemmer for BM25, or 'none'")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing index")
    group.add_argument("--update", action="store_true", help="add the rows appended to the corpus since the last build")
    parser.add_argument("--shard-size", type=int, default=50_000, help="rows per saved embedding shard (resume unit)")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    parser.add_argument("--ef-construction", type=int, default=100, help="HNSW build beam width")
    parser.add_argument("--ef-search", type=int, default=64, help="HNSW search beam width (saved as default)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4*sqrt(rows))")
    parser.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantisers (must divide the dimension)")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists probed per query (saved as default)")
    parser.add_argument(
        "--rerank",
        type=int,
        default=0,
        metavar="F",
        help="ivfpq: re-rank the best F*k candidates with exact (memory-mapped) vectors; 0 = off (default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_encoder_arguments(parser)
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    from llm_embedder.retrieval.dense import build_index_folder
    from llm_embedder.tasks.registry import TASKS

    TASKS.get(args.task)
    dense = args.index_type.lower() != "none"
    if not dense and not args.bm25:
        raise UserError("--index-type none builds nothing without --bm25")
    params = IndexParams(
        index_type=args.index_type,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        nlist=args.nlist,
        pq_m=args.pq_m,
        nprobe=args.nprobe,
        rerank=args.rerank,
    )
    embedder = None
    if dense:
        from llm_embedder.model.embedder import LLMEmbedder

        embedder = LLMEmbedder(
            args.model,
            device=args.device,
            dtype=args.dtype,
            backend=args.backend,
            batch_size=args.batch_size,
            key_max_length=args.max_length,
            use_instructions=instructions_flag(args),
        )
    if args.output.startswith("milvus://"):
        return _index_into_store(args, embedder)
    mode = "overwrite" if args.overwrite else "update" if args.update else "create"
    manifest = build_index_folder(
        args.corpus,
        args.output,
        embedder=embedder,
        task=args.task,
        key_template=args.key_template,
        params=params,
        dense=dense,
        bm25=args.bm25,
        bm25_stemmer=None if args.bm25_stemmer.lower() == "none" else args.bm25_stemmer,
        mode=mode,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    parts = [p for p in ("dense", "bm25") if manifest.get(p)]
    dense_info = manifest.get("dense") or {}
    extra = f" ({dense_info.get('factory')}, dim {dense_info.get('dim')})" if dense_info else ""
    print(f"indexed {manifest.get('count')} rows into {args.output}: {' + '.join(parts)}{extra}")
    return 0


def _index_into_store(args: argparse.Namespace, embedder: object) -> int:
    from llm_embedder.retrieval.store import open_store, split_uri
    from llm_embedder.retrieval.store.corpus import index_corpus

    if embedder is None:
        raise UserError("a Milvus collection always holds vectors", hint="drop --index-type none")
    if args.update:
        raise UserError("--update is for index folders", hint="rerun without it: a Milvus index run resumes by row")
    kind = args.index_type.lower()
    if kind not in ("flat", "hnsw"):
        raise UserError(f"--index-type {args.index_type} is not available for Milvus", hint="use flat or hnsw")
    base, name = split_uri(args.output)
    if name is None:
        raise UserError(f"{args.output}: name the collection", hint="e.g. milvus://127.0.0.1:19530/docs")
    with open_store(base) as store:
        info = index_corpus(
            args.corpus,
            store,
            name,
            embedder=embedder,
            task=args.task,
            key_template=args.key_template,
            index=kind,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            show_progress=not args.no_progress,
        )
        count = store.collection(name).count()
    print(f"indexed {count} rows into {args.output}: dense + bm25 ({info.index}, dim {info.dim})")
    return 0
