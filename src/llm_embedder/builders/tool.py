"""``llm-embedder build tool``: a tool corpus and tool-retrieval records from API specifications.

Input: ToolBench-style files (a JSON list, or JSON lines; ``.gz`` accepted) whose items are user requests::

    {"query": "...", "query_id": 43,
     "api_list": [{"category_name", "tool_name", "api_name", "api_description",
                   "required_parameters", "optional_parameters", "template_response"}, ...],
     "relevant APIs": [["tool_name", "api_name"], ...]}

``--catalog FILE`` adds APIs that no request mentions (a JSON list of API objects) to the corpus. Each API
becomes one key, serialised as in the reference's ToolBench data::

    {category_name}, {tool_name}, {api_name}, {api_description}, required_params: {json}, optional_params: {json}

(``--with-return-schema`` appends ``, return_schema: {json}`` like the reference's toy file). Written to
``-o DIR``: ``corpus.jsonl`` (unique APIs, first appearance first) and ``records.jsonl`` with ``pos`` = the
request's relevant APIs (in ``api_list`` order), ``neg`` = the other APIs of its ``api_list`` and then BM25 hard
negatives from the whole corpus (query = request, positives excluded), ``-k`` negatives in all;
``pos_index``/``neg_index`` point into the corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_embedder.data.jsonl import decode_json_line, readable_gzip, write_jsonl
from llm_embedder.data.records import Record, write_records
from llm_embedder.errors import DataError, UserError


def load_items(path: str) -> list[tuple[str, Any]]:
    """``(where, item)`` for a JSON list file or a JSON-lines file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    opener = gzip.open if p.suffix == ".gz" else open
    with readable_gzip(p), opener(p, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(str(p), None, f"not valid UTF-8 (byte {exc.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(str(p), exc.lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        return [(f"{p}: item {i}", item) for i, item in enumerate(data)]
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        items.append((f"{p}:{lineno}", decode_json_line(line, p, lineno, objects=False)))
    if not items:
        raise DataError(str(p), None, "file is empty")
    return items


def _fail(where: str, message: str, field: str | None = None, hint: str | None = None) -> DataError:
    return DataError(where, None, message, field=field, hint=hint)


def serialise_api(api: Any, where: str, *, with_return_schema: bool = False) -> str:
    """One API as a retrieval key (the reference's ToolBench serialisation)."""
    if not isinstance(api, dict):
        raise _fail(where, f"an API must be an object, got {type(api).__name__}", "api_list")
    for name in ("tool_name", "api_name"):
        if not isinstance(api.get(name), str):
            raise _fail(where, "missing or not a string", f"api_list[].{name}")

    def params(name: str) -> str:
        return json.dumps(api.get(name) or [], ensure_ascii=False)

    text = (
        f"{api.get('category_name', '') or ''}, {api['tool_name']}, {api['api_name']}, "
        f"{api.get('api_description', '') or ''}, required_params: {params('required_parameters')}, "
        f"optional_params: {params('optional_parameters')}"
    )
    if with_return_schema:
        text += f", return_schema: {json.dumps(api.get('template_response') or {}, ensure_ascii=False)}"
    return text


def _relevant(item: dict[str, Any], where: str) -> list[tuple[str, str]]:
    value = item.get("relevant APIs", item.get("relevant_apis"))
    if not isinstance(value, list) or not value:
        raise _fail(
            where, "missing or empty", "relevant APIs", "list the [tool_name, api_name] pairs that solve the request"
        )
    out = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _fail(where, "entries must be [tool_name, api_name] pairs", "relevant APIs")
        out.append((pair[0], pair[1]))
    return out


def build_tool(
    inputs: Sequence[str],
    output_dir: str,
    *,
    catalog: Sequence[str] = (),
    k: int = 20,
    with_return_schema: bool = False,
    stemmer: str | None = "english",
    task: str = "tool",
) -> tuple[int, int]:
    """Write ``corpus.jsonl`` and ``records.jsonl`` under ``output_dir``; returns (corpus rows, records)."""
    from llm_embedder.retrieval.bm25 import BM25Retriever

    if k < 0:
        raise UserError(f"-k must be >= 0, got {k}")
    keys: list[str] = []
    row_of: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in row_of:
            row_of[text] = len(keys)
            keys.append(text)
        return row_of[text]

    requests = []
    for path in inputs:
        for where, item in load_items(path):
            if not isinstance(item, dict):
                raise _fail(where, f"expected an object, got {type(item).__name__}")
            if not isinstance(item.get("query"), str) or not item["query"].strip():
                raise _fail(where, "missing or not a string", "query")
            apis = item.get("api_list")
            if not isinstance(apis, list) or not apis:
                raise _fail(where, "missing or empty", "api_list")
            texts = [serialise_api(api, where, with_return_schema=with_return_schema) for api in apis]
            rows = [add(t) for t in texts]
            by_name: dict[tuple[str, str], int] = {}
            for api, row in zip(apis, rows, strict=True):
                by_name.setdefault((api["tool_name"], api["api_name"]), row)
            pos_rows = []
            for pair in _relevant(item, where):
                if pair not in by_name:
                    raise _fail(where, f"relevant API {list(pair)} is not in its api_list", "relevant APIs")
                if by_name[pair] not in pos_rows:
                    pos_rows.append(by_name[pair])
            pos_rows.sort(key=rows.index)  # api_list order, as in the reference data
            qid = item.get("query_id")
            requests.append((item["query"], pos_rows, rows, qid if isinstance(qid, (int, str)) else where))
    for path in catalog:
        for where, item in load_items(path):
            add(serialise_api(item, where, with_return_schema=with_return_schema))
    if not requests:
        raise UserError("no requests found in the inputs")

    retriever = BM25Retriever(keys, stemmer=stemmer) if k else None
    records = []
    for query, pos_rows, api_rows, qid in requests:
        excluded = set(pos_rows)
        neg_rows: list[int] = []
        for row in api_rows:
            if row not in excluded and len(neg_rows) < k:
                neg_rows.append(row)
                excluded.add(row)
        if retriever is not None and len(neg_rows) < k:
            depth = min(len(keys), k + len(excluded))
            for row, _ in retriever.search([query], depth).hits(0):
                if len(neg_rows) == k:
                    break
                if row not in excluded:
                    neg_rows.append(row)
                    excluded.add(row)
        records.append(
            Record(
                query=query,
                pos=[keys[r] for r in pos_rows],
                neg=[keys[r] for r in neg_rows],
                pos_index=pos_rows,
                neg_index=neg_rows,
                task=task,
                query_id=qid,
            )
        )
    out = Path(output_dir)
    write_jsonl(out / "corpus.jsonl", ({"title": "", "text": key} for key in keys))
    write_records(out / "records.jsonl", records)
    return len(keys), len(records)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tool",
        help="tool corpus + records (relevant APIs, BM25 negatives) from ToolBench-style API specs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="REQUESTS", help="ToolBench-style JSON / JSON-lines files")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for corpus.jsonl + records.jsonl")
    parser.add_argument("--catalog", nargs="*", default=[], metavar="FILE", help="JSON lists of extra APIs")
    parser.add_argument("-k", type=int, default=20, help="negatives per record (api_list first, then BM25)")
    parser.add_argument("--with-return-schema", action="store_true", help="append each API's response schema")
    parser.add_argument("--stemmer", default="english", help="BM25 stemmer, or 'none'")
    parser.add_argument("--task", default="tool", help="task name written into the records (default tool)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows, count = build_tool(
        args.inputs,
        args.output,
        catalog=args.catalog,
        k=args.k,
        with_return_schema=args.with_return_schema,
        stemmer=None if args.stemmer.lower() == "none" else args.stemmer,
        task=args.task,
    )
    print(f"wrote {rows} corpus rows and {count} tool records to {args.output}")
    return 0
