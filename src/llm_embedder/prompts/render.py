"""``render_prompt``: a task's prompt from its task-table template, a query and retrieved keys, in a token budget.

One rendering for every caller - reward scoring (one candidate, key cut to 512 tokens), downstream evaluation (the
top-k keys in the LLM's context) and the server's ``/v1/augment`` (retrieved hits for an LLM elsewhere) - so a
``--tasks`` edit of a template changes all three. Everything textual comes from the task table (``TaskSpec.reward``):

* ``template``: ``{key}``, ``{query}``, ``{answer}`` (and any other record field); the prompt is the template up
  to ``{answer}`` (the *context*), the answer is what an LM is scored on or asked to produce. Text after
  ``{answer}`` is not part of the prompt (the answer is the last thing the LLM writes).
* ``key_separator``: joins several keys in the ``{key}`` slot.
* ``key_order``: how the kept keys read -
  ``relevance`` (most relevant first, standard RAG: qa),
  ``nearest_last`` (most relevant right before the query, where an LLM attends most: icl demonstrations - the
  reference's order too), ``chronological`` (by the key's position in its conversation or document: chat, lrlm).

The budget rule everywhere: the answer is never cut and not counted; the query and the template text are always
kept; keys are taken most relevant first while they fit, so an overflow drops the LEAST relevant ones. The key
that overflows is cut to the room left (its beginning for ``relevance``, its end - the part nearest the query - for
``chronological``), except for ``nearest_last`` demonstrations, which are dropped whole (a demonstration cut in half
loses its label). The reference's ICL evaluation instead cut the prompt from the left after putting the most
relevant demonstration first, i.e. it dropped the best ones (method.md section 8).

Without keys (none retrieved, or none fits) the prompt is :func:`~.template.without_keys` of the template.

Example::

    >>> from llm_embedder.tasks import get_task
    >>> words = lambda text: len(text.split())  # a token counter; a tokenizer works the same way
    >>> p = render_prompt(get_task("qa"), "Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."],
    ...                   count_tokens=words, answer="Shakespeare")
    >>> p.context
    'Knowledge: Hamlet is a play by Shakespeare.\\n\\nQuestion: Who wrote Hamlet?\\n\\nAnswer: '
    >>> p.text[p.answer_start:]
    'Shakespeare'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.prompts.budget import Keep, TokenBudget
from llm_embedder.prompts.template import split_template, without_keys
from llm_embedder.tasks.spec import TaskSpec
from llm_embedder.utils.templates import render_template

#: tokens held back for what joint tokenisation may add over the sum of the parts (merges at joins)
SLACK_TOKENS = 4
#: an overflowing key is kept cut only if at least this many of its tokens fit
MIN_TRUNCATED_TOKENS = 16


@dataclass(frozen=True)
class RetrievedKey:
    """One retrieved key: its text and where it came from.

    ``position`` is its index among the record's candidates, its corpus row, or (server) any number that orders
    keys in time; ``key_order: chronological`` sorts by it.
    """

    text: str
    position: int


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt.

    Attributes:
        context: the prompt up to where the answer starts (what an LLM is given).
        answer: the answer as placed after ``context`` (stripped), or ``None`` when none was given.
        kept: indices into the given keys of those in the prompt, in prompt order.
    """

    context: str
    answer: str | None
    kept: tuple[int, ...]

    @property
    def text(self) -> str:
        """``context + answer``: the whole prompt as one string."""
        return self.context + (self.answer or "")

    @property
    def answer_start(self) -> int:
        """Character offset of the answer in :attr:`text` (== ``len(context)``); an LM scorer tokenises
        ``context`` and ``answer`` separately (:func:`llm_embedder.lm.likelihood.build_request`) to score exactly
        the answer's tokens."""
        return len(self.context)


def prompt_template(spec: TaskSpec, template: str | None = None) -> str:
    """The task's template (``template`` replaces it); a task without one is a one-line UserError."""
    chosen = template if template is not None else spec.reward.template
    if not chosen:
        raise UserError(
            f"task {spec.name!r} has no prompt template (reward.template)",
            hint="give the task a reward.template with {key}, {query} and {answer} in a --tasks file",
        )
    return chosen


def render_prompt(
    spec: TaskSpec,
    query: str,
    keys: Sequence[str | RetrievedKey],
    *,
    tokenizer: Any = None,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
    max_key_tokens: int | None = None,
    answer: str | None = None,
    fields: Mapping[str, Any] | None = None,
    template: str | None = None,
    where: str = "",
) -> RenderedPrompt:
    """Render ``spec``'s prompt for ``query`` with ``keys`` (most relevant first) fitted into a token budget.

    Args:
        spec: the task; its ``reward`` section gives template, key separator and key order (see the module doc).
        query: the query text (stripped).
        keys: retrieved keys, most relevant first: strings (position = their index) or :class:`RetrievedKey`.
        tokenizer: the LLM's tokenizer, for counting and cutting; or
        count_tokens: a ``count(text) -> int`` function instead (no tokenizer needed, e.g. on a server).
        max_tokens: budget of the context (template text + query + keys); ``None``: no limit. The answer is
            never counted nor cut.
        max_key_tokens: cut every key to this many tokens first, keeping its beginning (the reward's 512).
        answer: the expected output (stripped) to place after the context; ``None`` renders the context only.
        fields: other values the template may name (a record's extra fields).
        template: replaces the task's template (``llm-embedder score --template``).
        where: ``file:line`` for error messages.

    Returns:
        a :class:`RenderedPrompt` (context, answer, kept keys).
    """
    text_template = prompt_template(spec, template)
    if (tokenizer is None) == (count_tokens is None) and (max_tokens is not None or max_key_tokens is not None):
        raise ValueError("render_prompt needs exactly one of tokenizer or count_tokens for a token budget")
    budget = TokenBudget(tokenizer, count_tokens) if (tokenizer is not None or count_tokens is not None) else None
    items = [k if isinstance(k, RetrievedKey) else RetrievedKey(str(k), i) for i, k in enumerate(keys)]
    texts = [k.text.strip() for k in items]
    if max_key_tokens is not None:
        assert budget is not None
        texts = [budget.truncate(t, max_key_tokens, "start").strip() for t in texts]

    values: dict[str, Any] = dict(fields or {})
    values["query"] = query.strip()
    prefix, _ = split_template(text_template)
    order = spec.reward.key_order
    separator = spec.reward.key_separator

    chosen: list[tuple[int, str]] = list(enumerate(texts))
    if max_tokens is not None and chosen:
        assert budget is not None
        fixed = budget.length(render_template(prefix, {**values, "key": ""}, where=where).rstrip(" \t"))
        chosen = fit_keys(
            budget,
            texts,
            room=max_tokens - fixed - SLACK_TOKENS,
            separator_tokens=max(budget.length(separator), 1) if separator else 0,
            truncate=None if order == "nearest_last" else ("end" if order == "chronological" else "start"),
        )
    if order == "chronological":
        chosen.sort(key=lambda item: items[item[0]].position)
    elif order == "nearest_last":
        chosen.reverse()

    if chosen:
        values["key"] = separator.join(text for _, text in chosen)
        context = render_template(prefix, values, where=where)
    else:
        context = render_template(split_template(without_keys(text_template))[0], values, where=where)
    return RenderedPrompt(
        context=context,
        answer=None if answer is None else answer.strip(),
        kept=tuple(i for i, _ in chosen),
    )


def fit_keys(
    budget: TokenBudget,
    keys: Sequence[str],
    *,
    room: int,
    separator_tokens: int,
    truncate: Keep | None,
    min_truncated_tokens: int = MIN_TRUNCATED_TOKENS,
) -> list[tuple[int, str]]:
    """``(index, text)`` of the keys (most relevant first) that fit in ``room`` tokens.

    Keys are taken in order while they fit whole (each after the first also costs ``separator_tokens``); the first
    one that does not fit is dropped together with every less relevant key after it - or, with ``truncate``, kept cut
    to the room left (its ``truncate`` side), provided at least ``min_truncated_tokens`` fit.
    """
    out: list[tuple[int, str]] = []
    for i, length in enumerate(budget.lengths(list(keys))):
        need = length + (separator_tokens if out else 0)
        if need <= room:
            out.append((i, keys[i]))
            room -= need
            continue
        left = room - (separator_tokens if out else 0)
        if truncate is not None and left >= min_truncated_tokens:
            out.append((i, budget.truncate(keys[i], left, truncate)))
        break
    return out
