"""Memory scenario (chat): perplexity of the reply given the retrieved earlier turn(s).

Prompt = the retrieved turns in chronological order (their order in ``history``), then
``Speaker 1: {query}\\nSpeaker 2:``; target = `` {reply}`` - the chat reward template without the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import RetrievedKey
from llm_embedder.evaluation.downstream.perplexity import PerplexityEvaluator
from llm_embedder.evaluation.downstream.prompting import chronological_context


class ChatEvaluator(PerplexityEvaluator):
    """Token-weighted perplexity of the next Speaker-2 reply with the top-k memory turns in the prompt."""

    name: ClassVar[str] = "chat"
    turn_template: ClassVar[str] = "Speaker 1: {query}\nSpeaker 2:"

    def build_context(self, tokenizer: Any, record: Record, keys: Sequence[RetrievedKey]) -> str:
        turn = self.turn_template.format(query=record.query.strip())
        return chronological_context(tokenizer, keys, turn, budget=self.settings.max_prompt_tokens, separator="\n")
