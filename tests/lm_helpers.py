"""Tiny random causal LMs for tests that need an LLM's arithmetic but not its quality (likelihood, eval, downstream)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llm_embedder.evaluation.downstream.base import LanguageModel


def tiny_llama(vocab_size: int, **overrides: Any) -> Any:
    """A seeded, randomly initialised 2-layer Llama (``overrides`` replace LlamaConfig fields)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    fields: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    }
    config = LlamaConfig(vocab_size=vocab_size, **{**fields, **overrides})
    return LlamaForCausalLM(config).eval()


def make_tiny_lm(folder: Path | None = None) -> LanguageModel:
    """A tiny Llama with the bundled SmolLM2 tokenizer (saved to ``folder`` when given, for ``--lm FOLDER``)."""
    from transformers import AutoTokenizer

    from llm_embedder.lm.loading import resolve_lm

    tokenizer = AutoTokenizer.from_pretrained(resolve_lm(None))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = tiny_llama(
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if folder is not None:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    return LanguageModel(model, tokenizer, name="tiny-llama")
