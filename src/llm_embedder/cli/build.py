"""``llm-embedder build <kind>``: make records from raw data (see ``llm_embedder.builders``)."""

from __future__ import annotations

import argparse

from llm_embedder.builders import BUILDERS
from llm_embedder.cli.common import register_modules


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "build", help="build records from raw data (lrlm texts, dialogues, ...)", description=__doc__
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    register_modules(kinds, "llm_embedder.builders", BUILDERS)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
