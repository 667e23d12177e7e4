"""The prompt of one augment: the keys of several sources in ONE prompt, rendered by the prompt layer.

:func:`llm_embedder.prompts.render_prompt` renders one task's prompt; an augment may draw on knowledge, memory and
tools at once. The prompt is the one of the first source whose task has a template in the task table (a chatbot that
lists its memory first gets the chat prompt, a RAG app that lists its knowledge base first the qa prompt; a
source list of tools only gets the qa prompt: tool descriptions are knowledge for the LLM). The ``{key}`` slot holds
the keys of all sources, in source order, each source's keys most relevant first, so the budget drops the least
relevant keys of the LAST source first. A chronological template (chat) shows each memory source in the order it
happened. No prompt text is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_embedder.prompts import RetrievedKey, render_prompt
from llm_embedder.tasks.spec import TaskSpec

#: room between sections in the ``position`` numbering (more keys than this per source is refused by the limits)
_SECTION_STRIDE = 1_000_000


@dataclass
class Section:
    """The keys one source contributes, most relevant first; ``positions`` order them in time (memory)."""

    spec: TaskSpec
    keys: list[str]
    positions: list[int] | None = None
    kept: list[int] = field(default_factory=list)


def build_prompt(
    sections: Sequence[Section],
    query: str,
    *,
    tokenizer: Any,
    max_tokens: int,
    task: Callable[[str], TaskSpec],
) -> str:
    """The prompt for ``query``; fills each section's ``kept`` (indices of its keys that made it into the prompt)."""
    spec = next((s.spec for s in sections if s.spec.reward.template), None) or task("qa")
    keys: list[RetrievedKey] = []
    owner: list[tuple[int, int]] = []
    for s, section in enumerate(sections):
        positions = section.positions if section.positions is not None else list(range(len(section.keys)))
        for j, (text, position) in enumerate(zip(section.keys, positions, strict=True)):
            keys.append(RetrievedKey(text, s * _SECTION_STRIDE + position))
            owner.append((s, j))
    rendered = render_prompt(spec, query, keys, tokenizer=tokenizer, max_tokens=max_tokens)
    for section in sections:
        section.kept = []
    for index in rendered.kept:
        s, j = owner[index]
        sections[s].kept.append(j)
    return rendered.context
