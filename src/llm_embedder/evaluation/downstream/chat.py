"""Memory scenario (chat): perplexity of the reply given the retrieved earlier turn(s).

The prompt is the chat task's template (``{key}\\nSpeaker 1: {query}\\nSpeaker 2: {answer}`` in the built-in
table) with the retrieved turns in chronological order (their order in ``history``, ``key_order:
chronological``); the target is the reply.
"""

from __future__ import annotations

from typing import ClassVar

from llm_embedder.evaluation.downstream.perplexity import PerplexityEvaluator


class ChatEvaluator(PerplexityEvaluator):
    """Token-weighted perplexity of the next Speaker-2 reply with the top-k memory turns in the prompt."""

    name: ClassVar[str] = "chat"
