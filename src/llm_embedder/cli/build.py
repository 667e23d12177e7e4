"""``llm-embedder build <kind>``: make records from raw data (see ``llm_embedder.builders``)."""

from __future__ import annotations

import argparse
import importlib

from llm_embedder.builders import BUILDERS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("build", help="build records from raw data (lrlm texts, dialogues, ...)", description=__doc__)
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    for name in BUILDERS:
        try:
            module = importlib.import_module(f"llm_embedder.builders.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"llm_embedder.builders.{name}":
                continue
            raise
        module.register(kinds)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
