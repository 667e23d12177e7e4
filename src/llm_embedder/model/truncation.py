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


def text_budget(tokenizer: Any, max_length: int, prompt: str | None) -> int:
    """Tokens left for the text in an input of ``max_length`` tokens after the special tokens and ``prompt``."""
    used = tokenizer.num_special_tokens_to_add(pair=False)
    if prompt:
        used += len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return max(0, max_length - used)


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
