"""``llm-embedder demo``: the product's main job on a small offline sample, in minutes on 2 CPU cores.

Runs the demo recipe (``recipes/demo.yaml``, shipped inside the package): tool retrieval and long-range language
modelling built at run time from Python's own standard library, scored by the bundled SmolLM2, used to fine-tune
the bundled MiniLM with the paper's losses and homogeneous batches, then compared before/after against BM25.
"""

from __future__ import annotations

import argparse
from importlib import resources


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the offline end-to-end demo", description=__doc__)
    parser.add_argument("-o", "--output-dir", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_embedder.pipeline.config import load_config
    from llm_embedder.pipeline.runner import Pipeline

    with resources.as_file(resources.files("llm_embedder.pipeline").joinpath("demo.yaml")) as recipe:
        config = load_config(recipe, {"output_dir": args.output_dir})
    Pipeline(config, device=args.device).run()
    print(f"\nsummary: {args.output_dir}/summary.md   plot: {args.output_dir}/summary.png")
    return 0
