"""``llm-embedder eval``: compare retrievers on a task - retrieval metrics and the LLM's downstream quality.

The task table decides the scenario (qa answers, chat/lrlm perplexity, icl accuracy, retrieval-only for tool and
convsearch), its retrieval metrics and the keys per prompt. Prints a markdown table (rows = retrievers) and writes
OUT/<task>.json, OUT/<task>.md and OUT/<task>.png (one bar chart per metric).

Retrievers: none, random, recency (chat/lrlm: the latest candidates), bm25, hybrid (bm25 + default, or
hybrid:PATH), default (the bundled MiniLM), an encoder folder or hub id; label any of them as LABEL=SPEC.

Below the table, every retriever is compared with the baselines (--baseline; default bm25 and base when present) on
the main retrieval metric, query by query: mean difference, 95% bootstrap interval and randomization-test p-value.
"""

from __future__ import annotations

import argparse

from llm_embedder.cli.common import add_tasks_file_argument, load_tasks_file
from llm_embedder.lm.precision import LM_DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="compare retrievers on a task (retrieval metrics + LLM downstream metrics)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, help="task name (see `llm-embedder tasks`)")
    parser.add_argument("--data", required=True, metavar="FILE", help="records to evaluate (JSON lines)")
    parser.add_argument("--corpus", metavar="FILE", help="corpus to retrieve from (default: each record's candidates)")
    parser.add_argument(
        "--retriever",
        "-r",
        action="append",
        dest="retrievers",
        metavar="SPEC",
        required=True,
        help="a retriever to compare (repeat): none, random, recency, bm25, hybrid[:PATH], default, PATH, LABEL=SPEC",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        dest="baselines",
        metavar="NAME",
        default=None,
        help="compare every retriever with this one, query by query (repeat; default: bm25 and base when present)",
    )
    parser.add_argument(
        "--lm", default=None, help="causal LM: smollm2 (default), gemma3, a folder, a .gguf or a hub id"
    )
    parser.add_argument(
        "--lm-dtype",
        default="fp32",
        choices=LM_DTYPES,
        help="LM precision for the downstream metrics (default fp32, the exact reference; auto / bf16-mixed: bf16 "
        "products, 2.6-2.8x faster on a CPU with bf16 instructions, as `score` uses)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda ... for the LM and the encoders")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only N records (cheap CPU runs)")
    parser.add_argument("--sample", choices=["first", "random"], default="first", help="which N records --limit keeps")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample random and of the random retriever")
    parser.add_argument("--top-k", type=int, default=None, help="keys per prompt (default: the task table's top_k)")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="prompt budget; the target is never cut")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy answer length (qa)")
    parser.add_argument(
        "--candidates-only", action="store_true", help="rank each record's candidates even with --corpus"
    )
    parser.add_argument("--no-downstream", action="store_true", help="retrieval metrics only (no LLM)")
    parser.add_argument(
        "--downstream-limit", type=int, default=None, help="give the LLM only the first N evaluated records"
    )
    parser.add_argument("--key-template", default=None, help="render corpus rows with this template, e.g. '{text}'")
    parser.add_argument("-o", "--output", default=None, metavar="OUT_DIR", help="write <task>.json/.md/.png here")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    from llm_embedder.evaluation.report import render_markdown, write_report
    from llm_embedder.evaluation.runner import evaluate

    results = evaluate(
        args.task,
        args.data,
        args.retrievers,
        corpus=args.corpus,
        lm=args.lm,
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        top_k=args.top_k,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        candidates_only=args.candidates_only,
        downstream=not args.no_downstream,
        downstream_limit=args.downstream_limit,
        key_template=args.key_template,
        lm_dtype=args.lm_dtype,
        device=args.device,
        baselines=args.baselines,
        show_progress=not args.quiet,
    )
    print(render_markdown(results), end="")
    if args.output:
        paths = write_report(results, args.output)
        print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['png']}")
    return 0
