"""``llm-embedder search``: query an index built by ``llm-embedder index`` - an index folder or a Milvus collection
(``milvus://HOST:PORT/COLLECTION``).

One query on the command line prints the top hits with title/text snippets. ``--queries FILE.jsonl`` (objects
with a ``query`` field, optional ``query_id``) writes one JSON line per query: ``query_id``, ``query`` and
``hits`` (rank, row, score and the corpus row's fields) to ``-o OUT.jsonl`` or stdout. The query encoder is the
one recorded in the index (override with ``--model``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llm_embedder.cli.common import add_tasks_file_argument, load_tasks_file
from llm_embedder.data.jsonl import iter_jsonl
from llm_embedder.errors import DataError, UserError
from llm_embedder.retrieval.base import SearchResult

SNIPPET = 200


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("search", help="search an index (dense, BM25 or hybrid)", description=__doc__)
    parser.add_argument(
        "index", metavar="URI", help="index folder or milvus://HOST:PORT/COLLECTION written by `llm-embedder index`"
    )
    parser.add_argument("query", nargs="?", default=None, help="a query (or use --queries)")
    parser.add_argument("--queries", metavar="FILE", default=None, help="JSON-lines file of queries")
    parser.add_argument("-o", "--output", default=None, help="write JSON-lines results here (default: stdout)")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="hits per query")
    parser.add_argument(
        "--retriever",
        choices=["auto", "dense", "bm25", "hybrid"],
        default="auto",
        help="which part of the index to use (auto: dense when present, else bm25)",
    )
    parser.add_argument("--model", default=None, help="query encoder (default: the one that built the index)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32, help="queries per forward pass")
    parser.add_argument("--corpus", default=None, help="corpus file, if it moved since the index was built")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW beam width (recall vs speed)")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (recall vs speed)")
    parser.add_argument("--rerank", type=int, default=None, help="IVF-PQ re-rank factor (index built with --rerank)")
    parser.add_argument("--no-mmap", action="store_true", help="read the index into memory instead of mapping it")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def _read_queries(path: str) -> tuple[list[str], list[Any]]:
    queries: list[str] = []
    ids: list[Any] = []
    for lineno, obj in iter_jsonl(path):
        query = obj.get("query")
        if not isinstance(query, str):
            raise DataError(path, lineno, "missing or not a string", field="query")
        queries.append(query)
        ids.append(obj.get("query_id", obj.get("qid", len(ids))))
    return queries, ids


def _hits(result: SearchResult, i: int, rows: Any) -> list[dict[str, Any]]:
    hits = result.hits(i)
    fetched = rows.get([row for row, _ in hits])
    return [
        {"rank": rank, "row": row, "score": round(score, 6), **fields}
        for rank, ((row, score), fields) in enumerate(zip(hits, fetched, strict=True), start=1)
    ]


def _snippet(fields: dict[str, Any]) -> str:
    title = str(fields.get("title") or "").strip()
    text = " ".join(str(fields.get("text", "") or json.dumps(fields, ensure_ascii=False)).split())
    if len(text) > SNIPPET:
        text = text[: SNIPPET - 3] + "..."
    return f"{title} | {text}" if title else text


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    from llm_embedder.retrieval.registry import open_index

    if (args.query is None) == (args.queries is None):
        raise UserError("give one query or --queries FILE", hint='e.g. llm-embedder search INDEX "who wrote hamlet"')
    if args.k <= 0:
        raise UserError(f"-k must be positive, got {args.k}")
    opened = open_index(
        args.index,
        kind=args.retriever,
        model=args.model,
        device=args.device,
        batch_size=args.batch_size,
        corpus=args.corpus,
        mmap=not args.no_mmap,
        ef_search=args.ef_search,
        nprobe=args.nprobe,
        rerank=args.rerank,
    )
    rows = opened.rows
    retriever = opened.retriever
    if args.query is not None:
        queries, ids = [args.query], [0]
    else:
        queries, ids = _read_queries(args.queries)
    result = retriever.search(queries, args.k)

    if args.queries is None and args.output is None:
        hits = _hits(result, 0, rows)
        if not hits:
            print("no hits")
        for hit in hits:
            fields = {k: v for k, v in hit.items() if k not in ("rank", "row", "score")}
            print(f"{hit['rank']:>3}. [row {hit['row']}] {hit['score']:.4f}  {_snippet(fields)}")
        return 0

    lines = (
        json.dumps({"query_id": qid, "query": q, "hits": _hits(result, i, rows)}, ensure_ascii=False)
        for i, (q, qid) in enumerate(zip(queries, ids, strict=True))
    )
    if args.output is None:
        for line in lines:
            sys.stdout.write(line + "\n")
    else:
        from llm_embedder.utils.files import atomic_write

        with atomic_write(args.output) as handle:
            for line in lines:
                handle.write(line + "\n")
        print(f"wrote {len(queries)} results to {args.output}", file=sys.stderr)
    return 0
