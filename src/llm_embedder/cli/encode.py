"""``llm-embedder encode``: embed the queries or keys of a file into a ``.npy`` matrix.

Input: a JSON-lines file of records (their ``query`` for ``--side query``) or of corpus rows (rendered with the
task's key template for ``--side key``), or a plain text file with one text per line (``.txt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_embedder.cli.common import add_encoder_arguments, add_tasks_file_argument, instructions_flag, load_tasks_file
from llm_embedder.data.corpus import render_key
from llm_embedder.data.jsonl import iter_jsonl
from llm_embedder.data.records import Record
from llm_embedder.errors import DataError, UserError
from llm_embedder.tasks.registry import TASKS
from llm_embedder.utils.files import atomic_write


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("encode", help="embed queries or keys of a file into OUT.npy", description=__doc__)
    parser.add_argument(
        "input", metavar="INPUT", help="JSON-lines records/corpus rows, or a .txt file (one text a line)"
    )
    parser.add_argument("-o", "--output", required=True, help="output .npy file (float32, one row per input)")
    parser.add_argument("--task", required=True, help="task name (see `llm-embedder tasks`)")
    parser.add_argument("--side", choices=["query", "key"], default="query", help="encode as queries or as keys")
    parser.add_argument("--field", default=None, help="JSON field to encode (default: query, or the key template)")
    parser.add_argument("--key-template", default=None, help="template for keys, e.g. '{title} {text}'")
    parser.add_argument("--devices", default=None, help="comma-separated devices for multi-process encoding")
    add_encoder_arguments(parser)
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def read_texts(path: str, *, side: str, field: str | None, key_template: str) -> list[str]:
    """Texts to encode from ``path``: one per line (.txt) or one per JSON object.

    For queries every object is validated as a record (so a bad ``teacher_scores`` or an unknown ``task`` is
    reported with its file:line before any model is loaded); for keys each row goes through the key template.
    """
    p = Path(path)
    if p.suffix == ".txt":
        return _read_text_lines(p)
    texts = []
    for lineno, obj in iter_jsonl(p):
        if field:
            value = obj.get(field)
            if not isinstance(value, str):
                raise DataError(str(p), lineno, "missing or not a string", field=field)
            texts.append(value)
        elif side == "query":
            texts.append(Record.from_dict(obj, path=str(p), lineno=lineno).query)
        else:
            texts.append(render_key(key_template, obj, where=f"{p}:{lineno}"))
    return texts


def _read_text_lines(p: Path) -> list[str]:
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    texts = []
    with open(p, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(
                    str(p), lineno, f"not valid UTF-8 (byte {exc.start})", hint="re-encode the file as UTF-8"
                ) from None
            if line.strip():
                texts.append(line)
    if not texts:
        raise DataError(str(p), None, "file is empty (no texts)", hint="give a file with one text per line")
    return texts


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    spec = TASKS.get(args.task)
    key_template = args.key_template or spec.key_template
    # Read (and validate) the input before loading a model: bad data fails in a second, not after the load.
    texts = read_texts(args.input, side=args.side, field=args.field, key_template=key_template)
    import numpy as np

    from llm_embedder.model.embedder import LLMEmbedder

    embedder = LLMEmbedder(
        args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        batch_size=args.batch_size,
        use_instructions=instructions_flag(args),
    )
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    vectors = embedder.encode(texts, task=args.task, side=args.side, max_length=args.max_length, devices=devices)
    with atomic_write(args.output, "wb") as handle:
        np.save(handle, vectors)
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 to {args.output}")
    return 0
