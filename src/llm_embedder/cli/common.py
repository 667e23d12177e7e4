"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse

from llm_embedder.tasks.registry import TASKS

__all__ = ["add_tasks_file_argument", "load_tasks_file"]


def add_tasks_file_argument(parser: argparse.ArgumentParser) -> None:
    """The --tasks option of every command that reads the task table."""
    parser.add_argument(
        "--tasks",
        dest="tasks_file",
        metavar="FILE",
        help="YAML/JSON file with extra task definitions (same layout as the built-in task table)",
    )


def load_tasks_file(args: argparse.Namespace) -> None:
    """Register the tasks of ``--tasks FILE`` (if given) before anything reads the task table."""
    if getattr(args, "tasks_file", None):
        TASKS.load_file(args.tasks_file)


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="encoder folder or hub id (default: the embedded MiniLM)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weight precision")
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "onnx-int8"],
        help="inference runtime (onnx*: CPU fast path)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--max-length", type=int, default=None, help="token budget per text (default: the model's)")
    parser.add_argument(
        "--instructions",
        default="auto",
        choices=["auto", "on", "off"],
        help="prepend the task instructions: auto = only for a model trained with them (default), on, off",
    )


def add_service_arguments(parser: argparse.ArgumentParser, *, data_dir_required: bool) -> None:
    """The options that decide a service's encoder and store: ``serve`` and ``reindex`` must agree on them (a store
    records the encoder's identity and refuses vectors of another)."""
    parser.add_argument("--model", default=None, help="encoder folder or hub id (default: the bundled MiniLM)")
    parser.add_argument(
        "--data-dir", required=data_dir_required, help="folder for the embedded store and the feedback log"
    )
    parser.add_argument("--store", default=None, help="store URI, e.g. milvus://HOST:PORT (default: DATA_DIR/store)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        help="encoder runtime; auto (default): onnx-int8 on a CPU (the fastest, nDCG within 1%% of fp32), torch on a "
        "GPU; onnx gives exactly the fp32 vectors",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument(
        "--instructions", default="auto", choices=["auto", "on", "off"], help="task instructions (auto: as trained)"
    )


def instructions_flag(args: argparse.Namespace) -> bool | None:
    """``--instructions`` as ``LLMEmbedder(use_instructions=...)``: auto -> None (the model decides)."""
    return {"auto": None, "on": True, "off": False}[getattr(args, "instructions", "auto")]


def register_modules(sub: argparse._SubParsersAction, package: str, names: tuple[str, ...]) -> None:
    """Call ``register(sub)`` of each module ``package.<name>``; a module that does not exist is skipped.

    Sub-commands are one module each, so a missing module (an optional part) drops its command instead of
    breaking the whole CLI; an import error inside an existing module is still raised.
    """
    import importlib

    for name in names:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{package}.{name}":
                continue
            raise
        module.register(sub)
