"""``llm-embedder build <kind>``: make records from raw data (see ``llm_embedder.builders``).

The builders are typed library functions; this module is their command line (arguments in, one call, one line out).
Each kind's description is its builder module's docstring.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from llm_embedder.builders import BUILDERS
from llm_embedder.cli.common import add_tasks_file_argument, load_tasks_file
from llm_embedder.errors import UserError


def _docstring(kind: str) -> str | None:
    import importlib

    return importlib.import_module(f"llm_embedder.builders.{kind}").__doc__


def _stemmer(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _parser(kinds: argparse._SubParsersAction, kind: str, help: str) -> argparse.ArgumentParser:
    return kinds.add_parser(
        kind, help=help, description=_docstring(kind), formatter_class=argparse.RawDescriptionHelpFormatter
    )


# ---------------------------------------------------------------------------------------------------------- lrlm
def _register_lrlm(kinds: argparse._SubParsersAction) -> None:
    from llm_embedder.builders.lrlm import LrlmOptions
    from llm_embedder.lm.loading import BUNDLED_LMS, DEFAULT_LM

    parser = _parser(
        kinds, "lrlm", "long-range LM records from plain text files (score them with `llm-embedder score --task lrlm`)"
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT_FILE", help="plain text files, one document each (.gz ok)")
    parser.add_argument("-o", "--output", required=True, help="records (JSON lines)")
    parser.add_argument(
        "--lm",
        default=DEFAULT_LM,
        help=f"whose tokenizer cuts the chunks: {', '.join(BUNDLED_LMS)}, a folder or a hub id (default {DEFAULT_LM})",
    )
    defaults = LrlmOptions()
    parser.add_argument("--chunk-tokens", type=int, default=defaults.chunk_tokens, help="tokens per chunk")
    parser.add_argument("--max-candidates", type=int, default=defaults.max_candidates, help="earlier chunks per record")
    parser.add_argument("--every", type=int, default=defaults.every, help="a query every N chunks")
    parser.add_argument(
        "--min-history", type=int, default=defaults.min_history, help="earlier chunks before the first query"
    )
    parser.set_defaults(func=_run_lrlm)


def _run_lrlm(args: argparse.Namespace) -> int:
    from llm_embedder.builders.lrlm import LrlmOptions, build_lrlm

    options = LrlmOptions(args.chunk_tokens, args.max_candidates, args.every, args.min_history)
    summary = build_lrlm(args.texts, args.output, lm=args.lm, options=options)
    short = f" ({summary.short_documents} too short for a record)" if summary.short_documents else ""
    print(f"{summary.records} lrlm records from {summary.documents} documents{short} -> {args.output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------- chat
def _register_chat(kinds: argparse._SubParsersAction) -> None:
    from llm_embedder.builders.chat import FORMATS

    parser = _parser(kinds, "chat", "chat (memory) records from dialogues: MSC, {'turns': [...]} or lists of turns")
    parser.add_argument("inputs", nargs="+", metavar="DIALOGUES", help="JSON-lines files, one dialogue per line")
    parser.add_argument("-o", "--output", required=True, help="records file to write (JSON lines)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="auto", help="input format (default: detect)")
    parser.add_argument(
        "--pairs-per-dialogue", type=int, default=0, help="random pairs kept per dialogue (0 = all, the default)"
    )
    parser.add_argument("--min-history", type=int, default=1, help="skip pairs with fewer memory items (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sampling")
    parser.add_argument("--id-prefix", default=None, help="query_id prefix (default: the input file's name + '-')")
    parser.add_argument("--task", default="chat", help="task name written into the records (default chat)")
    parser.set_defaults(func=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from llm_embedder.builders.chat import build_chat

    count = build_chat(
        args.inputs,
        args.output,
        fmt=args.fmt,
        pairs_per_dialogue=args.pairs_per_dialogue,
        min_history=args.min_history,
        seed=args.seed,
        id_prefix=args.id_prefix,
        task=args.task,
    )
    print(f"wrote {count} chat records to {args.output}")
    return 0


# ----------------------------------------------------------------------------------------------------------- icl
def _register_icl(kinds: argparse._SubParsersAction) -> None:
    parser = _parser(
        kinds, "icl", "icl demonstration pool + records (BM25 candidates from the same task) from labelled task files"
    )
    parser.add_argument("pools", nargs="+", metavar="[NAME=]POOL", help="labelled JSON-lines file per task")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for corpus.jsonl + records.jsonl")
    parser.add_argument("--queries", nargs="*", default=[], metavar="NAME=FILE", help="held-out query examples")
    parser.add_argument("--input-template", default="{input}", help="model input from an example's fields")
    parser.add_argument("--output-template", default="{output}", help="label text from an example's fields")
    parser.add_argument(
        "--label-map", default=None, help="raw label -> label text, e.g. 'entailment=true,neutral=neither'"
    )
    parser.add_argument("-k", type=int, default=20, help="BM25 candidates (neg) per record (default 20)")
    parser.add_argument("--max-queries-per-task", type=int, default=0, help="sample this many queries (0 = all)")
    parser.add_argument("--max-options", type=int, default=20, help="label sets up to this size become 'options'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sampling")
    parser.add_argument("--stemmer", default="english", help="BM25 stemmer, or 'none'")
    parser.add_argument("--task", default="icl", help="task name written into the records (default icl)")
    parser.set_defaults(func=_run_icl)


def _run_icl(args: argparse.Namespace) -> int:
    from llm_embedder.builders.icl import build_icl, parse_label_map

    rows, count = build_icl(
        args.pools,
        args.output,
        queries=args.queries,
        input_template=args.input_template,
        output_template=args.output_template,
        label_map=parse_label_map(args.label_map),
        k=args.k,
        max_queries_per_task=args.max_queries_per_task,
        max_options=args.max_options,
        seed=args.seed,
        stemmer=_stemmer(args.stemmer),
        task=args.task,
    )
    print(f"wrote {rows} corpus rows and {count} icl records to {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------------------- tool
def _register_tool(kinds: argparse._SubParsersAction) -> None:
    parser = _parser(
        kinds, "tool", "tool corpus + records (relevant APIs, BM25 negatives) from ToolBench-style API specs"
    )
    parser.add_argument("inputs", nargs="+", metavar="REQUESTS", help="ToolBench-style JSON / JSON-lines files")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for corpus.jsonl + records.jsonl")
    parser.add_argument("--catalog", nargs="*", default=[], metavar="FILE", help="JSON lists of extra APIs")
    parser.add_argument("-k", type=int, default=20, help="negatives per record (api_list first, then BM25)")
    parser.add_argument("--with-return-schema", action="store_true", help="append each API's response schema")
    parser.add_argument("--stemmer", default="english", help="BM25 stemmer, or 'none'")
    parser.add_argument("--task", default="tool", help="task name written into the records (default tool)")
    parser.set_defaults(func=_run_tool)


def _run_tool(args: argparse.Namespace) -> int:
    from llm_embedder.builders.tool import build_tool

    rows, count = build_tool(
        args.inputs,
        args.output,
        catalog=args.catalog,
        k=args.k,
        with_return_schema=args.with_return_schema,
        stemmer=_stemmer(args.stemmer),
        task=args.task,
    )
    print(f"wrote {rows} corpus rows and {count} tool records to {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------------------- beir
def _register_beir(kinds: argparse._SubParsersAction) -> None:
    parser = _parser(kinds, "beir", "corpus + evaluation records (graded relevance kept) from a BEIR-format folder")
    parser.add_argument("folder", metavar="DIR", help="corpus.jsonl, queries.jsonl, qrels/<split>.tsv (.gz ok)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for corpus.jsonl + dev.jsonl")
    parser.add_argument("--task", required=True, help="task of the records (its key template renders pos)")
    parser.add_argument("--split", default="test", help="qrels split: qrels/<split>.tsv (default test)")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=_run_beir)


def _run_beir(args: argparse.Namespace) -> int:
    from llm_embedder.builders.beir import build_beir

    load_tasks_file(args)
    s = build_beir(args.folder, args.output, task=args.task, split=args.split)
    left = s.queries - s.records
    print(
        f"wrote {s.corpus_rows} corpus rows and {s.records} {args.task} records ({s.positives} relevant documents, "
        f"split {s.split}) to {args.output}; left out {left} of {s.queries} queries without a relevant document "
        f"({s.unjudged} not judged in this split, {s.no_relevant} judged only grade <= 0)"
    )
    return 0


# ----------------------------------------------------------------------------------------------------- negatives
def _register_negatives(kinds: argparse._SubParsersAction) -> None:
    parser = _parser(
        kinds, "negatives", "mine hard negatives from a corpus with BM25 or an embedder (positives excluded)"
    )
    parser.add_argument("input", metavar="IN", help="records (JSON lines)")
    parser.add_argument("-o", "--output", required=True, help="records file to write")
    parser.add_argument("--task", required=True, help="task of the records (query instruction, key template)")
    parser.add_argument("--corpus", required=True, help="corpus JSON-lines file the negatives come from")
    parser.add_argument("--key-template", default=None, help="how a corpus row becomes a key (default: the task's)")
    parser.add_argument(
        "--retriever", default="bm25", help="bm25 | an encoder (default, a model folder, a hub id) | an index folder"
    )
    parser.add_argument("-k", type=int, default=20, help="negatives per record (default 20)")
    parser.add_argument("--skip-top", type=int, default=0, help="skip the N best non-positive hits")
    parser.add_argument("--exclude-answers", action="store_true", help="skip passages that contain an answer")
    parser.add_argument("--device", default=None, help="encoder device (cpu, cuda, ...)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch size")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=_run_negatives)


def _run_negatives(args: argparse.Namespace) -> int:
    from llm_embedder.builders.negatives import make_retriever, mine_negatives
    from llm_embedder.data.corpus import Corpus
    from llm_embedder.data.records import load_records, write_records
    from llm_embedder.tasks.registry import TASKS

    load_tasks_file(args)
    spec = TASKS.get(args.task)
    if args.skip_top < 0:
        raise UserError(f"--skip-top must be >= 0, got {args.skip_top}")
    records = load_records(args.input, task=args.task)
    corpus = Corpus.from_file(args.corpus, args.key_template or spec.key_template)
    had_scores = sum(r.teacher_scores is not None for r in records)
    retriever = make_retriever(args.retriever, corpus, args.task, args)
    mined = mine_negatives(
        records, corpus, retriever, k=args.k, skip_top=args.skip_top, exclude_answers=args.exclude_answers
    )
    count = write_records(args.output, mined)
    short = sum(len(r.neg) < args.k for r in mined)
    note = f"; {short} got fewer than {args.k}" if short else ""
    dropped = f"; dropped teacher_scores of {had_scores} records (candidates changed)" if had_scores else ""
    print(f"wrote {count} records with mined negatives to {args.output}{note}{dropped}")
    return 0


_REGISTER: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "lrlm": _register_lrlm,
    "chat": _register_chat,
    "icl": _register_icl,
    "tool": _register_tool,
    "beir": _register_beir,
    "negatives": _register_negatives,
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "build", help="build records from raw data (lrlm texts, dialogues, ...)", description=__doc__
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    for kind in BUILDERS:
        _REGISTER[kind](kinds)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
