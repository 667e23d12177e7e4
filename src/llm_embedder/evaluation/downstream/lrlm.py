"""Long-range language modelling (lrlm): perplexity of the next chunk given retrieved earlier chunks.

Prompt = the retrieved chunks in document order (their order among the candidates, which are the chunks before
the query chunk), then the query chunk; target = the chunk that follows (``answers[0]``). When the budget is
short the least relevant chunks go first; the query chunk is always kept (cut from its start if it alone is too
long), since it is what the continuation depends on most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import RetrievedKey
from llm_embedder.evaluation.downstream.perplexity import PerplexityEvaluator
from llm_embedder.evaluation.downstream.prompting import chronological_context


class LRLMEvaluator(PerplexityEvaluator):
    """Token-weighted perplexity of the following chunk with the top-k earlier chunks prepended."""

    name: ClassVar[str] = "lrlm"
    chunk_separator: ClassVar[str] = "\n"

    def build_context(self, tokenizer: Any, record: Record, keys: Sequence[RetrievedKey]) -> str:
        query = record.query.strip()
        return chronological_context(
            tokenizer, keys, query, budget=self.settings.max_prompt_tokens, separator=self.chunk_separator
        )
