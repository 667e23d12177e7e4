"""Causal language models: the LLM whose feedback trains the embedder and whose answers evaluate it."""

from llm_embedder.lm.loading import BUNDLED_LMS, load_causal_lm, resolve_lm
from llm_embedder.lm.precision import DEFAULT_SCORING_DTYPE, LM_DTYPES, resolve_dtype

__all__ = ["BUNDLED_LMS", "DEFAULT_SCORING_DTYPE", "LM_DTYPES", "load_causal_lm", "resolve_dtype", "resolve_lm"]
