"""Long-range language modelling (lrlm): perplexity of the next chunk given retrieved earlier chunks.

The prompt is the lrlm task's text template (``{key}\\n{query} {answer}`` in the built-in table): the retrieved
chunks in document order (their order among the candidates, which are the chunks before the query chunk,
``key_order: chronological``), then the query chunk; the target is the chunk that follows (``answers[0]``). When
the budget is short the least relevant chunks go first; the query chunk is always kept (the LM's context is cut
from the left as a last resort), since it is what the continuation depends on most.
"""

from __future__ import annotations

from typing import ClassVar

from llm_embedder.evaluation.downstream.perplexity import PerplexityEvaluator


class LRLMEvaluator(PerplexityEvaluator):
    """Token-weighted perplexity of the following chunk with the top-k earlier chunks prepended."""

    name: ClassVar[str] = "lrlm"
