"""Entry point of the ``llm-embedder`` command.

Each sub-command lives in its own module ``llm_embedder.cli.<name>`` exposing ``register(subparsers)``, which adds
its parser and sets ``func``. User errors (bad input) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llm_embedder.cli.common import register_modules
from llm_embedder.errors import EXIT_USER_ERROR, UserError

#: sub-command modules, in the order ``--help`` lists them; a module that is missing is skipped
COMMANDS = ("tasks", "encode", "score", "build", "train", "index", "search", "eval", "pipeline", "serve", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-embedder",
        description="One embedder for everything an LLM retrieves: knowledge, memory, long context, examples, tools.",
    )
    parser.add_argument("--version", action="version", version="llm-embedder 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_modules(sub, "llm_embedder.cli", COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"llm-embedder {args.command}: error: {exc.line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"llm-embedder {args.command}: interrupted (progress so far is kept; rerun to resume)", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
