"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse

from llm_embedder.tasks.registry import add_tasks_file_argument, load_tasks_file

__all__ = ["add_tasks_file_argument", "load_tasks_file"]


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
