"""Token counting and cutting for prompt budgets, with or without a loaded LM.

Prompts are fitted to the LLM's context in ITS tokens, but the prompt layer must also run where no LM is loaded (the
server's ``/v1/augment`` renders prompts for an LLM that lives elsewhere). :class:`TokenBudget` therefore wraps
either a Hugging Face tokenizer (exact: counts, and cuts at token boundaries of the original text) or a plain
``count(text) -> int`` function (cuts at whitespace, found by bisection). Loading a tokenizer alone is cheap; a count
function is the escape hatch for APIs that only expose a token counter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

Keep = Literal["start", "end"]


class TokenBudget:
    """Counts and cuts text in some LLM's tokens.

    Args:
        tokenizer: a Hugging Face tokenizer (special tokens are never counted).
        count: ``count(text) -> int``, used when there is no tokenizer.
    """

    def __init__(self, tokenizer: Any = None, count: Callable[[str], int] | None = None) -> None:
        if tokenizer is None and count is None:
            raise ValueError("a token budget needs a tokenizer or a count function")
        self.tokenizer = tokenizer
        self._count = count

    @classmethod
    def of(cls, measure: TokenBudget | Any) -> TokenBudget:
        """``measure`` as a budget: a :class:`TokenBudget`, a tokenizer, or a count function."""
        if isinstance(measure, TokenBudget):
            return measure
        if measure is not None and not hasattr(measure, "encode") and callable(measure):
            return cls(count=measure)
        return cls(tokenizer=measure)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts of ``texts`` (one batched tokenizer call)."""
        if not texts:
            return []
        if self.tokenizer is None:
            assert self._count is not None
            return [int(self._count(t)) for t in texts]
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def length(self, text: str) -> int:
        return self.lengths([text])[0]

    def truncate(self, text: str, max_tokens: int, keep: Keep = "start") -> str:
        """``text`` cut to at most ``max_tokens`` tokens, keeping its beginning (``start``) or its end (``end``).

        With a tokenizer the cut falls on a token boundary of the ORIGINAL text (character offsets), so nothing is
        re-spelled by decoding; without offsets it decodes the kept ids.
        """
        if max_tokens <= 0:
            return ""
        if self.tokenizer is None:
            return self._truncate_by_count(text, max_tokens, keep)
        try:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except (NotImplementedError, ValueError, TypeError, KeyError):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= max_tokens:
                return text
            kept = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
            return self.tokenizer.decode(kept, skip_special_tokens=True)
        if len(offsets) <= max_tokens:
            return text
        if keep == "start":
            return text[: offsets[max_tokens][0]]
        return text[offsets[len(offsets) - max_tokens][0] :]

    def _truncate_by_count(self, text: str, max_tokens: int, keep: Keep) -> str:
        if self.length(text) <= max_tokens:
            return text
        # cut points: word starts; the longest piece that fits is found by bisection (counts grow with length)
        starts = [i for i in range(1, len(text)) if text[i - 1].isspace() and not text[i].isspace()]
        pieces = [text[:i].rstrip() for i in starts] if keep == "start" else [text[i:] for i in reversed(starts)]
        lo, hi = 0, len(pieces)  # pieces[:lo] fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.length(pieces[mid - 1]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return pieces[lo - 1] if lo else ""
