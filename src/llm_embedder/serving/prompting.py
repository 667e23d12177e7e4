"""The augmented prompt of one request: retrieved keys of every source fitted into a token budget.

Stand-in until the prompt layer (``llm_embedder.prompts``) lands: the prompt is the reward template of the task table
(``tasks/builtin.yaml``) of the first source whose task has one, with ``{key}`` = the fitted keys of all sources (in
source order, each source's keys most relevant first) and ``{answer}`` left for the LLM. No prompt string is written
here. Overflow drops the least relevant keys of the LAST source first, so the earlier sources keep their best keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_embedder.tasks.spec import TaskSpec
from llm_embedder.utils.templates import render_template

#: tokens held back for what joint tokenisation may add over the sum of the parts
SLACK_TOKENS = 4


@dataclass
class Section:
    """The keys one source contributes, most relevant first."""

    spec: TaskSpec
    keys: list[str]


def _lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def build_prompt(tokenizer: Any, sections: Sequence[Section], query: str, max_tokens: int) -> tuple[str, list[int]]:
    """``(prompt, keys kept per section)`` for ``query`` within ``max_tokens`` tokens of ``tokenizer``."""
    template = next((s.spec.reward.template for s in sections if s.spec.reward.template), None) or "{key}\n{query}"
    fixed = render_template(template, {"key": "", "query": query, "answer": ""})
    room = max_tokens - _lengths(tokenizer, [fixed])[0] - SLACK_TOKENS
    kept: list[int] = []
    chosen: list[str] = []
    for section in sections:
        n = 0
        for length, key in zip(_lengths(tokenizer, section.keys), section.keys, strict=True):
            if length + 1 > room:
                break
            chosen.append(key)
            room -= length + 1
            n += 1
        kept.append(n)
    prompt = render_template(template, {"key": "\n".join(chosen), "query": query, "answer": ""})
    return prompt.rstrip(" "), kept
