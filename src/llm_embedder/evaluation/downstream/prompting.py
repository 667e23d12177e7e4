"""Fitting retrieved keys into a prompt under a token budget.

The rule everywhere: the target (answer, reply, next chunk, label) is never truncated; the query is kept; retrieved
keys are taken in relevance order while they fit, so overflow always drops the LEAST relevant keys first. (The
reference ICL evaluation truncated the prompt from the left after putting the most relevant demonstration first,
i.e. it dropped the most relevant ones - method.md section 8.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llm_embedder.evaluation.downstream.base import RetrievedKey

#: tokens held back for what joint tokenisation may add over the sum of the parts (BOS, merges at joins)
SLACK_TOKENS = 4


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts of ``texts`` without special tokens (one batched tokenizer call)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def truncate_text(tokenizer: Any, text: str, max_tokens: int, keep: Literal["start", "end"] = "start") -> str:
    """``text`` cut to ``max_tokens`` tokens, keeping its beginning or its end."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    if max_tokens <= 0:
        return ""
    kept = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
    return tokenizer.decode(kept, skip_special_tokens=True)


def select_keys(
    tokenizer: Any,
    keys: Sequence[str],
    *,
    budget: int,
    fixed_tokens: int,
    separator_tokens: int = 1,
    truncate_overflow: bool = True,
    keep: Literal["start", "end"] = "start",
    min_truncated_tokens: int = 16,
) -> list[tuple[int, str]]:
    """``(index, text)`` of the keys (given most relevant first) that fit in ``budget`` next to ``fixed_tokens``.

    Keys are taken in order while they fit whole (each costs its tokens plus ``separator_tokens``); the first one
    that does not fit is dropped together with every less relevant key after it - unless ``truncate_overflow``, in
    which case it is kept cut to the room left (its ``keep`` side), provided at least ``min_truncated_tokens`` fit.
    """
    room = budget - fixed_tokens - SLACK_TOKENS
    out: list[tuple[int, str]] = []
    for i, length in enumerate(token_lengths(tokenizer, keys)):
        need = length + separator_tokens
        if need <= room:
            out.append((i, keys[i]))
            room -= need
            continue
        if truncate_overflow and room - separator_tokens >= min_truncated_tokens:
            out.append((i, truncate_text(tokenizer, keys[i], room - separator_tokens, keep=keep)))
        break
    return out


def build_scoring_request(lm: Any, context: str, target: str, *, budget: int, truncate_from: str = "left") -> Any:
    """A likelihood request for ``target`` after ``context``; the context is cut to ``budget`` tokens as a last
    resort (keys were already fitted), never the target."""
    from llm_embedder.lm.likelihood import build_request

    return build_request(lm.tokenizer, context, target, max_context_tokens=budget, truncate_context_from=truncate_from)


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


def chronological_context(
    tokenizer: Any, keys: Sequence[RetrievedKey], tail: str, *, budget: int, separator: str = "\n"
) -> str:
    """The most relevant ``keys`` that fit in ``budget`` next to ``tail``, in their original order, then ``tail``.

    For the memory scenarios (chat turns, lrlm chunks): relevance decides which keys are kept, their position in
    the conversation or document decides how they read. A key that overflows is cut from its start (its end is
    nearest to ``tail``).
    """
    if not keys:
        return tail
    kept = select_keys(
        tokenizer,
        [k.text.strip() for k in keys],
        budget=budget,
        fixed_tokens=token_lengths(tokenizer, [tail])[0],
        keep="end",
    )
    kept.sort(key=lambda item: keys[item[0]].position)
    return separator.join([text for _, text in kept] + [tail])
