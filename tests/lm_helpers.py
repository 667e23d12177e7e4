"""A tiny random causal LM for tests that need an LLM but not its quality (shared by the eval and downstream tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from llm_embedder.evaluation.downstream.base import LanguageModel


def make_tiny_lm(folder: Path | None = None) -> LanguageModel:
    """A 2-layer random Llama with the bundled SmolLM2 tokenizer (saved to ``folder`` when given)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm_embedder.lm.loading import resolve_lm

    tokenizer = AutoTokenizer.from_pretrained(resolve_lm(None))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    if folder is not None:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    return LanguageModel(model, tokenizer, name="tiny-llama")
