"""Asking the LM for likelihoods of the scenarios' prompts (built by :mod:`llm_embedder.prompts`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_embedder.prompts import RenderedPrompt


def build_scoring_request(lm: Any, prompt: RenderedPrompt, *, budget: int, truncate_from: str = "left") -> Any:
    """A likelihood request for ``prompt.answer`` after ``prompt.context``; the context is cut to ``budget`` tokens
    as a last resort (the keys were already fitted), never the answer."""
    from llm_embedder.lm.likelihood import build_request

    return build_request(
        lm.tokenizer,
        prompt.context,
        prompt.answer or "",
        max_context_tokens=budget,
        truncate_context_from=truncate_from,
    )


def score(lm: Any, requests: Sequence[Any], settings: Any, desc: str) -> tuple[Any, Any]:
    """``(sum_logprob, n_tokens)`` per request, batched by the shared likelihood scorer."""
    from llm_embedder.lm.likelihood import score_requests

    return score_requests(
        lm.model,
        list(requests),
        token_budget=settings.token_budget,
        max_batch_size=settings.max_batch_size,
        show_progress=settings.show_progress,
        desc=desc,
    )
