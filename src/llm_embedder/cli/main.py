"""Entry point of the ``llm-embedder`` command.

Each sub-command lives in its own module ``llm_embedder.cli.<name>`` exposing ``register(subparsers)``, which adds
its parser and sets ``func``. User errors (bad input) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from llm_embedder.cli.common import register_modules
from llm_embedder.errors import EXIT_USER_ERROR, UserError

#: sub-command modules, in the order ``--help`` lists them; a module that is missing is skipped
COMMANDS = (
    "tasks",
    "encode",
    "score",
    "build",
    "train",
    "index",
    "search",
    "eval",
    "pipeline",
    "serve",
    "reindex",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-embedder",
        description="One embedder for everything an LLM retrieves: knowledge, memory, long context, examples, tools.",
    )
    parser.add_argument("--version", action="version", version="llm-embedder 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_modules(sub, "llm_embedder.cli", COMMANDS)
    return parser


#: errors of the machine the output goes to, not of our code: each is one line saying what to do
_OS_ERRORS = {
    errno.EACCES: ("permission denied", "check its permissions; outputs must go to a folder you can write to"),
    errno.EPERM: ("operation not permitted", "check its permissions; outputs must go to a folder you can write to"),
    errno.EROFS: ("read-only file system", "choose an output folder on a writable file system"),
    errno.ENOSPC: ("no space left on device", "free some space or choose an output folder on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose an output folder on another disk"),
}


def os_error_line(exc: OSError) -> str | None:
    """One line for an OSError caused by the output location (permissions, read-only, disk full), else None."""
    if exc.errno not in _OS_ERRORS:
        return None
    what, hint = _OS_ERRORS[exc.errno]
    path = exc.filename if exc.filename is not None else "writing the output"
    return UserError(f"{path}: {what}", hint=hint).line()


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
    except OSError as exc:
        line = os_error_line(exc)
        if line is None:
            raise  # not the environment's fault: a bug, keep the traceback
        print(f"llm-embedder {args.command}: error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"llm-embedder {args.command}: interrupted (progress so far is kept; rerun to resume)", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
