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
from llm_embedder.evaluation.downstream.prompting import select_keys, token_lengths


class LRLMEvaluator(PerplexityEvaluator):
    """Token-weighted perplexity of the following chunk with the top-k earlier chunks prepended."""

    name: ClassVar[str] = "lrlm"
    chunk_separator: ClassVar[str] = "\n"

    def build_context(self, tokenizer: Any, record: Record, keys: Sequence[RetrievedKey]) -> str:
        query = record.query.strip()
        if not keys:
            return query
        fixed = token_lengths(tokenizer, [query])[0]
        kept = select_keys(
            tokenizer,
            [k.text.strip() for k in keys],
            budget=self.settings.max_prompt_tokens,
            fixed_tokens=fixed,
            keep="end",
        )
        kept.sort(key=lambda item: keys[item[0]].position)
        return self.chunk_separator.join([text for _, text in kept] + [query])
