"""``llm-embedder serve``: retrieval augmentation for live LLM applications over HTTP (FastAPI + uvicorn).

Knowledge, conversation memory, long-document memory, examples and tools from one embedder, each with its task's
instruction; ``POST /v1/augment`` builds the prompt and logs the candidates, ``POST /v1/feedback`` records the
answer, and ``llm-embedder serve-feedback`` (or ``GET /v1/collections/NAME/feedback``) exports the log as records for
``llm-embedder score`` then ``llm-embedder train``. API documentation: http://HOST:PORT/docs.

Binds 127.0.0.1 unless told otherwise; any other address needs an API key (--api-key or $LLM_EMBEDDER_API_KEY).

Example: llm-embedder serve --data-dir ./serve-data --port 8000
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

from llm_embedder.cli.common import (
    add_service_arguments,
    add_tasks_file_argument,
    instructions_flag,
    load_tasks_file,
)
from llm_embedder.errors import UserError

API_KEY_ENV = "LLM_EMBEDDER_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve retrieval augmentation (knowledge, memory, examples, tools) over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_service_arguments(parser, data_dir_required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help=f"required as 'Authorization: Bearer KEY' (or ${API_KEY_ENV})")
    parser.add_argument(
        "--lm", default=None, help="LLM for prompts and 'generate': smollm2, gemma3, a folder, a hub id"
    )
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting for the encoder before 429")
    parser.add_argument(
        "--max-batch", type=int, default=64, help="texts per encoder call (1 = no micro-batching, for comparison)"
    )
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (413 past it)")
    parser.add_argument("--chunk-tokens", type=int, default=128, help="LM tokens per long-document chunk (lrlm)")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="default prompt budget of augment")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)

    export = sub.add_parser(
        "serve-feedback",
        help="export a served collection's feedback log as records (for `llm-embedder score`)",
        description="Write the answered augments of a collection (or conversation_memory / document_memory) as "
        "JSON-lines records, read from DATA_DIR/feedback without a running server.",
    )
    export.add_argument("--data-dir", required=True, help="the server's --data-dir")
    export.add_argument("collection", help="collection name (conversation_memory for chat memory)")
    export.add_argument("-o", "--output", required=True, help="records (JSON lines)")
    export.set_defaults(func=run_export)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        raise UserError(
            f"--host {args.host} is not a loopback address and no API key is set",
            hint=f"pass --api-key KEY (or set ${API_KEY_ENV}) to serve beyond this machine, or bind 127.0.0.1",
        )
    for name in ("port", "max_queue", "max_batch", "chunk_tokens", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_body_mb <= 0:
        raise UserError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    load_tasks_file(args)
    # ONNX Runtime's pool threads must not spin between encoder calls: the event loop needs those cores (see
    # llm_embedder.model.onnx_backend.default_spinning); set before the encoder is built, overridable by the user.
    os.environ.setdefault("LLM_EMBEDDER_ORT_SPIN", "0")
    import uvicorn

    from llm_embedder.serving.app import create_app
    from llm_embedder.serving.service import Limits, open_service

    limits = Limits(
        max_queue=args.max_queue, max_batch_texts=args.max_batch, max_body_bytes=int(args.max_body_mb * 1024 * 1024)
    )
    service = open_service(
        args.data_dir,
        model=args.model,
        store=args.store,
        backend=args.backend,
        device=args.device,
        lm=args.lm,
        limits=limits,
        chunk_tokens=args.chunk_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        use_instructions=instructions_flag(args),
    )
    app = create_app(service, api_key=api_key)
    print(f"llm-embedder serve: http://{args.host}:{args.port} (API docs at /docs)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        service.close()
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_embedder.serving.feedback import FeedbackLog
    from llm_embedder.serving.service import check_collection_name
    from llm_embedder.utils.files import atomic_write

    check_collection_name(args.collection)
    folder = Path(args.data_dir) / "feedback"
    if not folder.is_dir():
        raise UserError(f"{folder}: no feedback log here", hint="pass the --data-dir the server was started with")
    count = 0
    with atomic_write(args.output) as handle:
        for record in FeedbackLog(folder).records(args.collection):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    print(f"{count} feedback records of {args.collection} -> {args.output}", file=sys.stderr)
    return 0
