"""Causal language models: the LLM whose feedback trains the embedder and whose answers evaluate it."""

from llm_embedder.lm.loading import BUNDLED_LMS, load_causal_lm, resolve_lm

__all__ = ["BUNDLED_LMS", "load_causal_lm", "resolve_lm"]
