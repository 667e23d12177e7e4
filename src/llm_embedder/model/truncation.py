"""Left truncation that keeps the instruction: cut a too-long input from the START, not the end.

Tokenizers can truncate from the left (``truncation_side="left"``), but the task instruction is part of the same
input and would be the first thing cut. Some queries carry their point at the end: a conversational-search query
is the whole conversation, and the question being searched for is its last turn. So the text alone is shortened,
at a token boundary found through the fast tokenizer's character offsets, to the budget left after the
instruction and the special tokens; the usual right truncation then has nothing left to cut. The text stays a
plain string, so the torch and ONNX paths and the training collator all see the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_embedder.errors import UserError


def input_overhead(tokenizer: Any, prompt: str | None) -> int:
    """Tokens an input spends before its text: the special tokens and ``prompt``."""
    used = tokenizer.num_special_tokens_to_add(pair=False)
    if prompt:
        used += len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return int(used)


def keep_tail(texts: Sequence[str], tokenizer: Any, budget: int) -> list[str]:
    """Each text cut from the left to its last ``budget`` tokens (texts that fit are returned unchanged).

    The cut falls at the start of a word (after whitespace), moving forward past a word split into several
    tokens, so re-tokenising the result gives the full text's last tokens (WordPiece; a byte-level BPE may merge
    the first word differently). One word longer than the budget is cut inside. Needs a fast tokenizer (character
    offsets); every sentence-transformers model from the hub has one.
    """
    texts = list(texts)
    if not texts:
        return texts
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            "query_truncation: left needs a fast tokenizer (character offsets), and this model has a slow one",
            hint="convert the tokenizer (transformers' AutoTokenizer.from_pretrained(..., use_fast=True)) or set the "
            "task's query_truncation to right",
        )
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    out = []
    for text, offsets in zip(texts, encoded["offset_mapping"], strict=True):
        if len(offsets) <= budget:
            out.append(text)
        elif budget <= 0:
            out.append("")
        else:
            out.append(text[offsets[_word_start(offsets, len(offsets) - budget)][0] :])
    return out


def _word_start(offsets: Sequence[tuple[int, int]], first: int) -> int:
    """The first token at or after ``first`` that does not continue the previous token's word (a gap before it)."""
    for i in range(first, len(offsets)):
        if i == 0 or offsets[i][0] > offsets[i - 1][1]:
            return i
    return first


#: characters kept per token of budget before tokenizing (prose averages 4-5 characters per token, and WordPiece
#: turns a word of more than 100 characters into one unknown token); see :func:`clip_chars`
CHARS_PER_TOKEN = 64


def clip_chars(texts: Sequence[str], max_length: int, *, tail: bool = False) -> list[str]:
    """Cut each text to ``max_length * CHARS_PER_TOKEN`` characters before it reaches the tokenizer.

    A fast tokenizer encodes the whole text before truncating it: one 50 MB field costs gigabytes of RAM for the
    512 tokens that are kept. The cut is far beyond what ``max_length`` tokens of real text span, so the tokens kept
    are unchanged; only pathological inputs (huge runs of whitespace) lose words. ``tail`` keeps the end instead (for
    left truncation).
    """
    limit = max(1, int(max_length)) * CHARS_PER_TOKEN
    if tail:
        return [t if len(t) <= limit else t[-limit:] for t in texts]
    return [t if len(t) <= limit else t[:limit] for t in texts]
