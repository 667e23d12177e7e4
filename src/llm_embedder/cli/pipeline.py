"""``llm-embedder pipeline RECIPE``: build -> score -> train -> evaluate -> summary, resumable.

Rerunning the same command skips finished stages and resumes interrupted ones.
"""

from __future__ import annotations

import argparse

from llm_embedder.cli.common import add_tasks_file_argument, load_tasks_file


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pipeline", help="run a full recipe (build, score, train, eval)", description=__doc__)
    parser.add_argument("recipe", metavar="RECIPE", help="YAML/JSON recipe (see recipes/)")
    parser.add_argument("-o", "--output-dir", default=None, help="run folder (default: the recipe's output_dir)")
    parser.add_argument(
        "--stages", default=None, help="comma-separated subset of build,score,train,eval (default: all)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of the recipe's variants to train and evaluate, e.g. full (default: all)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    from llm_embedder.pipeline.config import load_config, select_variants
    from llm_embedder.pipeline.runner import Pipeline

    overrides = {"output_dir": args.output_dir} if args.output_dir else None
    config = load_config(args.recipe, overrides)
    if args.variants is not None:
        config = select_variants(config, args.variants.split(","))
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    Pipeline(config, device=args.device).run(stages)
    return 0
