"""Log-probabilities of target tokens given a context: the one primitive behind LLM rewards and LM evaluation.

Why it is fast:

* Only the positions that predict a target token get logits. The decoder runs once over ``context + target``;
  from its last hidden states we select the rows that predict target tokens, apply the LM head to those rows
  only and take the log-softmax over the vocabulary for them. A 600-token qa prompt with a 5-token answer needs
  5 vocabulary projections instead of 600 (the LM head and the full-vocabulary softmax are a large share of a
  small LM's cost and of its memory).
* Requests are sorted by length and cut into dynamic batches under a token budget (``batch size x longest
  sequence <= token_budget``), so little compute is spent on padding and short requests travel in big batches.
* Identical requests are scored once.
* On a CPU the log-sum-exp over the vocabulary runs a few answer rows at a time, so its passes stay in cache
  (:func:`logsumexp_rows`; the same numbers).

Padding is on the right, so real tokens keep positions ``0..n-1`` and never attend to padding: the model's own
causal mask ensures it for a row of one context and one target (no padding mask, so attention takes its causal
kernel), a tree mask for a row that shares its context among several targets. The LM runs in the precision it
was loaded with (``lm.precision``: its weights' dtype, or bf16 autocast for ``bf16-mixed``); the log-softmax is
always computed in float32.

Tokenisation (:func:`build_request`): the context and the target are tokenised separately and their ids
concatenated, so the target tokens are exactly the answer's own tokens, whatever the context is, and a score
always covers the same tokens for the same answer. The price is a possible difference at the seam with
tokenising ``context + target`` in one go; spaces at the seam are handled so that, for common tokenizers, the
result equals the one-go tokenisation (see :func:`build_request`).

BOS: ``add_bos=None`` follows the tokenizer: a BOS id is prepended exactly when the tokenizer itself adds one when
encoding text with special tokens (Llama, Gemma - Gemma degrades badly without it). SmolLM2's ``bos_token``
is the chat marker ``<|im_start|>`` and its tokenizer does not add it to plain text, so nothing is prepended;
this is also what the reference gets by tokenising the whole prompt with default settings.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from llm_embedder.lm.precision import precision_context, probe_forward

__all__ = [
    "ScoringRequest",
    "build_request",
    "char_budget",
    "default_token_budget",
    "logsumexp_rows",
    "model_device",
    "max_token_chars",
    "plan_batches",
    "score_requests",
    "tokenizer_adds_bos",
]


@dataclass
class ScoringRequest:
    """One (context, target) pair as token ids; the target's log-probabilities are summed."""

    context_ids: list[int]  # tokens before the target (already truncated as the caller wants; may include BOS)
    target_ids: list[int]  # tokens whose log-probs are summed

    def __len__(self) -> int:
        return len(self.context_ids) + len(self.target_ids)


# ----------------------------------------------------------------------------------------------------- tokenising

_TOKENIZER_FACTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _facts(tokenizer: Any) -> dict[str, Any]:
    try:
        facts = _TOKENIZER_FACTS.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time (cheap)
        facts = None
    if facts is not None:
        return facts
    facts = {
        "adds_bos": _probe_adds_bos(tokenizer),
        "seam_space": _probe_seam_space(tokenizer),
        "max_token_chars": _probe_max_token_chars(tokenizer),
    }
    try:
        _TOKENIZER_FACTS[tokenizer] = facts
    except TypeError:
        pass
    return facts


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _probe_adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("Hello", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _probe_seam_space(tokenizer: Any) -> str:
    """How a space at the context/target seam is tokenised by this tokenizer when the text is encoded in one go.

    ``"target"``: the space belongs to the next word (byte-level BPE: GPT-2, SmolLM2, Llama-3, Qwen: ``" Paris"``);
    ``"drop"``: separately encoded words get a leading-space marker anyway (SentencePiece with a dummy prefix:
    Llama-2), so the seam space is dropped; ``"keep"``: neither reproduces the one-go encoding, leave the text.
    """
    whole = _encode(tokenizer, "Answer: Paris")
    if _encode(tokenizer, "Answer:") + _encode(tokenizer, " Paris") == whole:
        return "target"
    if _encode(tokenizer, "Answer:") + _encode(tokenizer, "Paris") == whole:
        return "drop"
    return "keep"


def _probe_max_token_chars(tokenizer: Any) -> int:
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocab = {}
    return max((len(token) for token in vocab), default=0) or _FALLBACK_TOKEN_CHARS


#: characters per token assumed when a tokenizer does not list its vocabulary (generous: exactness first)
_FALLBACK_TOKEN_CHARS = 256


def max_token_chars(tokenizer: Any) -> int:
    """Most characters of input text one token can stand for: the longest vocabulary entry.

    A vocabulary entry is at least as long as the text it covers (byte-level BPE spells each byte as one
    character; SentencePiece spells a space as one ``▁``; byte-fallback entries ``<0x0A>`` are longer than their
    byte), so ``n`` tokens never cover more than ``n * max_token_chars`` characters. (A normaliser that deletes
    characters - control characters, accents - breaks this bound; the bundled LMs' tokenizers have none.)
    SmolLM2: 81 (a newline followed by 80 spaces).
    """
    return int(_facts(tokenizer)["max_token_chars"])


def char_budget(tokenizer: Any, tokens: int, *, margin: int = 16) -> int:
    """Characters to keep of a text of which only its first ``tokens`` tokens are used.

    Why: tokenising a 50 MB field to keep 512 of its tokens costs gigabytes (ids, offsets and the tokenizer's
    own buffers for the whole text). Cutting the text to ``(tokens + margin) * max_token_chars`` characters
    first gives the same first ``tokens`` tokens: they lie inside the first ``tokens * max_token_chars``
    characters, and the cut can only change how the ``margin`` tokens after them are merged.
    """
    return (max(tokens, 0) + margin) * max_token_chars(tokenizer)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` prepends its BOS token to plain text (so scoring should too)."""
    return bool(_facts(tokenizer)["adds_bos"])


def build_request(
    tokenizer: Any,
    context: str,
    target: str,
    *,
    max_context_tokens: int | None = None,
    truncate_context_from: Literal["left", "right"] = "left",
    add_bos: bool | None = None,
    seam_space: bool = True,
) -> ScoringRequest:
    """Tokenise ``context`` and ``target`` separately into a :class:`ScoringRequest`.

    Args:
        tokenizer: a Hugging Face tokenizer.
        context: the text before the target (prompt, retrieved key, earlier chunks, ...).
        target: the text whose tokens are scored.
        max_context_tokens: keep at most this many context tokens (BOS not counted).
        truncate_context_from: ``"left"`` drops the oldest context tokens (keeps the text next to the target),
            ``"right"`` drops the newest.
        add_bos: prepend the BOS id; ``None`` = exactly when the tokenizer adds one itself (see module doc).
        seam_space: move spaces/tabs that end ``context`` to where the tokenizer would put them when encoding
            ``context + target`` in one go (``"Answer: " + "Paris"`` -> ``"Answer:"`` + ``" Paris"`` for
            byte-level BPE), so the concatenated ids match the one-go tokenisation. Newlines are never moved:
            they are separate tokens and belong to the prompt.

    Returns:
        the request; an empty target gives ``target_ids == []`` (score 0 over 0 tokens).
    """
    facts = _facts(tokenizer)
    if seam_space and target and context[-1:] in (" ", "\t"):
        stripped = context.rstrip(" \t")
        if facts["seam_space"] == "target" and not target[:1].isspace():
            context, target = stripped, context[len(stripped) :] + target
        elif facts["seam_space"] == "drop":
            context = stripped
    context_ids = _encode(tokenizer, context) if context else []
    target_ids = _encode(tokenizer, target) if target else []
    if max_context_tokens is not None and len(context_ids) > max_context_tokens:
        if truncate_context_from == "left":
            context_ids = context_ids[len(context_ids) - max_context_tokens :] if max_context_tokens > 0 else []
        elif truncate_context_from == "right":
            context_ids = context_ids[:max_context_tokens]
        else:
            raise ValueError(f"truncate_context_from must be 'left' or 'right', got {truncate_context_from!r}")
    if add_bos is None:
        add_bos = facts["adds_bos"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and (not context_ids or context_ids[0] != bos):
        context_ids = [bos, *context_ids]
    return ScoringRequest(context_ids=context_ids, target_ids=target_ids)


# ------------------------------------------------------------------------------------------------------- batching


def plan_batches(lengths: Sequence[int], token_budget: int = 8192, max_batch_size: int = 64) -> list[list[int]]:
    """Indices grouped into batches: longest first, ``len(batch) * longest <= token_budget``.

    The plan depends only on ``lengths`` (ties keep input order), so the same requests always get the same
    batches - and therefore bit-identical scores. A request longer than the budget gets a batch of its own.
    """
    if token_budget < 1 or max_batch_size < 1:
        raise ValueError("token_budget and max_batch_size must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and (len(current) >= max_batch_size or (len(current) + 1) * longest > token_budget):
            batches.append(current)
            current = []
        if not current:
            longest = max(lengths[i], 1)
        current.append(i)
    if current:
        batches.append(current)
    return batches


#: padded tokens per forward pass when the caller does not say. CPUs: small batches keep the activations in
#: cache and need less padding - 1,024 took 10-33% less CPU time than 8,192 on every reward task with SmolLM2
#: in bf16-mixed (benchmarks/README.md); GPUs: large batches fill the device (memory is the bound).
DEFAULT_TOKEN_BUDGET = {"cpu": 1024, "cuda": 8192}


def default_token_budget(device: str | torch.device) -> int:
    """The default token budget of ``device`` (see ``DEFAULT_TOKEN_BUDGET``; other devices: the GPU value)."""
    return DEFAULT_TOKEN_BUDGET.get(torch.device(device).type, DEFAULT_TOKEN_BUDGET["cuda"])


# -------------------------------------------------------------------------------------------------------- scoring

#: upper bound on floats in one (rows x vocabulary) logits slice (~128 MB in float32)
_LOGITS_ELEMENTS = 1 << 25
#: float32 bytes of one row block of :func:`logsumexp_rows` on a CPU: well inside a core's L2 cache (2 MiB on the
#: AMX VM, where 2 rows of a 49,152-word vocabulary were fastest: benchmarks/README.md)
_LSE_BLOCK_BYTES = 1 << 19


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """The float32 log-sum-exp of each row of the 2-D ``x`` (any floating dtype), equal bit for bit to
    ``torch.logsumexp(x.float(), dim=-1)``.

    Why: ``torch.logsumexp`` makes four passes over its input (max, subtract, exp, sum), each over the whole
    (rows x vocabulary) slice - 400 MB for lrlm's 2,088 answer rows - so on a CPU every pass streams from main
    memory. Done a few rows at a time, the float32 copy and the passes stay in L2: 4.7x faster on 800 rows x
    49,152 (192 -> 41 ms with 2 rows, 62 ms with 8); 3-8% of chat's and 7-10% of lrlm's scoring time. Each row's
    reduction is the same code on the same numbers, so the result does not change. GPUs take the whole slice.
    """
    rows = max(1, _LSE_BLOCK_BYTES // (4 * max(1, x.shape[-1])))
    if x.device.type != "cpu" or rows >= x.shape[0]:  # a GPU, or one block holds every row (none included)
        return torch.logsumexp(x.float(), dim=-1)
    out = torch.empty(x.shape[0], dtype=torch.float32)
    for i in range(0, x.shape[0], rows):
        torch.logsumexp(x[i : i + rows].float(), dim=-1, out=out[i : i + rows])
    return out


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s first parameter (cpu for a model without parameters, or a stand-in)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _pad_id(model: Any) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    if isinstance(pad, list):
        pad = pad[0] if pad else None
    return int(pad) if pad is not None and pad >= 0 else 0


def _softcap(model: Any) -> float | None:
    config = model.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None and hasattr(config, "get_text_config"):
        cap = getattr(config.get_text_config(), "final_logit_softcapping", None)
    return float(cap) if cap else None


@dataclass
class _Unit:
    """One context and the distinct targets scored after it (see :meth:`_Scorer.score_units`)."""

    context: tuple[int, ...]
    targets: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.context) + sum(len(t) for t in self.targets)


#: per model: does the selected-positions path reproduce the model's own logits? (checked once)
_FAST_PATH_OK: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _sliding_window(model: Any) -> int | None:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or (layer_types is not None and all(t == "full_attention" for t in layer_types)):
        return None
    return int(window)


#: columns appended to the bf16 copy of the LM head: two carry each row's shift, the rest keep the inner dimension
#: a multiple of 8
_SHIFT_COLUMNS = 8
_CENTRED_HEADS: weakref.WeakKeyDictionary[Any, tuple[tuple[int, int], torch.Tensor]] = weakref.WeakKeyDictionary()


def centred_head_weight(weight: torch.Tensor) -> torch.Tensor:
    """The LM head's ``[vocab, d]`` weight as the ``[vocab, d + 8]`` bf16 matrix :func:`centred_target_logprobs`
    takes: each row, then ``1, 1`` and zeros."""
    rows = weight.detach().to(torch.bfloat16)
    extra = torch.zeros(rows.shape[0], _SHIFT_COLUMNS, dtype=rows.dtype, device=rows.device)
    extra[:, :2] = 1
    return torch.cat([rows, extra], dim=1).contiguous()


def _centred_head_weight(head: Any) -> torch.Tensor:
    """:func:`centred_head_weight` of ``head``, made once per head and again only if its weight changes in place."""
    key = (head.weight.data_ptr(), head.weight._version)
    cached = _CENTRED_HEADS.get(head)
    if cached is None or cached[0] != key:
        cached = (key, centred_head_weight(head.weight))
        _CENTRED_HEADS[head] = cached
    return cached[1]


def centred_target_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p(label | row)`` with the LM head as a bf16 product, each row's logits shifted by the row's target
    logit BEFORE the product's output is rounded to bf16 (``weight`` from :func:`centred_head_weight`).

    Why: the head over the answer rows was the one float32 product left in ``bf16-mixed`` scoring (a bf16 product
    runs 3-4x faster on a CPU with AMX). A plain bf16 head rounds every logit to 8 bits of mantissa - +-0.06 on a
    logit of 20 - and the log-sum-exp inherits it. Here the product computes ``logit - target`` in float32
    accumulation (the two extra input columns hold ``-target`` split into two bf16 halves, against weight
    columns of ones) and rounds only that difference: the logits that decide the log-sum-exp lie near the
    target's, so their rounding error shrinks with their distance from it (+-0.004 within 2 nats) instead of
    with their size. The inputs are rounded to bf16 as every other product of ``bf16-mixed`` is; the target
    logit is summed in float32 from the same rounded inputs, so both sides of the difference see the same
    numbers. On the benchmark's records the rewards stay as close to fp32 as with a float32 head
    (``benchmarks/README.md``)."""
    d = hidden.shape[1]
    rounded = hidden.to(torch.bfloat16)
    target = (rounded.float() * weight[labels, :d].float()).sum(dim=-1)
    high = target.to(torch.bfloat16)
    low = (target - high.float()).to(torch.bfloat16)
    shift = torch.zeros(rounded.shape[0], weight.shape[1] - d, dtype=rounded.dtype, device=rounded.device)
    shift[:, 0], shift[:, 1] = -high, -low
    centred = torch.cat([rounded, shift], dim=1) @ weight.t()  # logit - target per row, rounded once
    return (target - high.float() - low.float()) - logsumexp_rows(centred)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class _Scorer:
    """Runs batches on one model, through the selected-positions fast path when the model allows it."""

    #: Whether rows of one context and one target carry a padding mask. They need none: padding is on the right
    #: and the model's own causal mask lets a real token see earlier positions only, which are all real. Without
    #: one, transformers' SDPA attention takes the causal kernel (no mask built or added, grouped key / value
    #: heads read unexpanded; on a CPU, past 512 tokens it also skips key blocks above the diagonal) - the same
    #: scores (``tests/test_likelihood.py``) in less time (``benchmarks/reward_ab.py --change mask``). The padding
    #: rows' own outputs are never read.
    padding_mask: bool = False

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model_device(model)
        self.pad_id = _pad_id(model)
        self.softcap = _softcap(model)
        self.sliding_window = _sliding_window(model)
        self.backbone = getattr(model, "base_model", None)
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.fast = self.backbone is not None and self.backbone is not model and self.head is not None
        if self.fast:
            try:
                self.fast = _FAST_PATH_OK[model]
            except (KeyError, TypeError):
                # Some architectures scale or post-process logits in their forward (e.g. a logit scale): then
                # fall back to the model's own logits, which stays exact.
                self.fast = self._fast_path_agrees()
                try:
                    _FAST_PATH_OK[model] = self.fast
                except TypeError:
                    pass

    def _fast_path_agrees(self) -> bool:
        """Whether the model's logits are its LM head on its backbone's last hidden states (softcapped as
        :meth:`_target_logprobs` does), checked once per model on a tiny input.

        Both sides run in the model's own precision - the head here gets what the model's forward gives it - so
        the comparison is exact in any precision (a ``bf16-mixed`` model runs only under its autocast). A
        difference means the architecture post-processes its logits (a logit scale, say); the scorer then takes
        the model's own logits, which stays exact.
        """
        hidden: list[torch.Tensor] = []
        hook = self.backbone.register_forward_hook(lambda module, args, output: hidden.append(output[0]))
        try:
            logits = probe_forward(self.model, self.device).logits
            with precision_context(self.model, self.device):
                mine = self.head(hidden[-1])
        finally:
            hook.remove()
        if self.softcap is not None:  # in the logits' own dtype, as the model's forward does it
            mine = torch.tanh(mine / self.softcap) * self.softcap
        return mine.shape == logits.shape and bool(torch.allclose(mine.float(), logits.float(), atol=1e-4, rtol=1e-4))

    def _target_logprobs(self, logits: torch.Tensor, labels: torch.Tensor, *, softcap: bool = False) -> torch.Tensor:
        logits = logits.float()
        if softcap and self.softcap is not None:
            # what the model's forward does after its LM head (Gemma 2/3); the full path gets it from the model
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.gather(1, labels[:, None]).squeeze(1) - logsumexp_rows(logits)

    def _logprobs_fast(self, inputs: dict[str, torch.Tensor], rows, positions, labels) -> torch.Tensor:  # type: ignore[no-untyped-def]
        hidden = self.backbone(**inputs, use_cache=False).last_hidden_state
        selected = hidden[rows, positions]
        if self.centred_head:
            weight = _centred_head_weight(self.head)

            def logprobs(answer_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                with torch.autocast(self.device.type, enabled=False):
                    return centred_target_logprobs(answer_rows, weight, targets)
        else:

            def logprobs(answer_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                return self._target_logprobs(self._head(answer_rows), targets, softcap=True)

        step = max(1, _LOGITS_ELEMENTS // max(1, self.head.weight.shape[0]))  # rows per (rows x vocabulary) slice
        parts = [logprobs(selected[i : i + step], labels[i : i + step]) for i in range(0, selected.shape[0], step)]
        return torch.cat(parts) if parts else selected.new_zeros(0, dtype=torch.float32)

    @property
    def centred_head(self) -> bool:
        """Whether the answer rows go through :func:`centred_target_logprobs`: a float32 head under bf16 autocast
        (``bf16-mixed``) with no softcap (a softcap bends the logits, so a shift no longer commutes with it)."""
        return (
            self.softcap is None
            and self.head is not None
            and self.head.weight.dtype == torch.float32
            and torch.is_autocast_enabled(self.device.type)
            and torch.get_autocast_dtype(self.device.type) == torch.bfloat16
        )

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on the selected rows; in float32 when the weights are (bf16-mixed autocast included).

        Why: under autocast the head's output would be rounded to bf16 - 8 bits of mantissa, i.e. +-0.06 on a
        logit of 20 - the largest error of ``bf16-mixed`` and enough to swap near-tied candidates. ``bf16-mixed``
        takes :func:`centred_target_logprobs` instead where it can; this is the path of a softcapped head, whose
        logits are bent before the log-softmax, so a per-row shift does not carry through.
        """
        if self.head.weight.dtype == torch.float32 and torch.is_autocast_enabled(self.device.type):
            with torch.autocast(self.device.type, enabled=False):
                return self.head(hidden.float())
        return self.head(hidden)

    def _logprobs_full(self, inputs: dict[str, torch.Tensor], rows, positions, labels) -> torch.Tensor:  # type: ignore[no-untyped-def]
        logits = self.model(**inputs, use_cache=False).logits
        return self._target_logprobs(logits[rows, positions], labels)

    def score_units(self, units: Sequence[_Unit]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per unit: (sums, counts) of each of its targets.

        A unit is one context with one or more targets. With one target the row is ``context + target`` under
        the usual causal mask; with several, the row is ``context + target_1 + target_2 + ...`` and a tree
        mask lets each target see the context and itself only, with positions restarting after the context -
        so the context is run once for all its targets, with the same result as separate rows.
        """
        tree = any(len(u.targets) > 1 for u in units)
        longest = max(len(u) for u in units)
        if tree and self.sliding_window is not None and longest > self.sliding_window:
            # A custom mask replaces the model's own sliding-window masks; it is exact only while a row fits in
            # the window. Otherwise score each target in its own row (the model then builds its masks itself).
            singles = [_Unit(u.context, [t]) for u in units for t in u.targets]
            merged = iter(self.score_units(singles))
            return [_concat([next(merged) for _ in u.targets]) for u in units]
        batch = len(units)
        ids = torch.full((batch, longest), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((batch, longest), dtype=torch.long)
        segments = torch.full((batch, longest), -1, dtype=torch.long)
        rows: list[int] = []
        positions: list[int] = []
        labels: list[int] = []
        owners: list[tuple[int, int]] = []
        for b, unit in enumerate(units):
            context = list(unit.context)
            n = len(context)
            ids[b, :n] = torch.tensor(context, dtype=torch.long)
            position_ids[b, :n] = torch.arange(n)
            segments[b, :n] = 0
            offset = n
            for t, target in enumerate(unit.targets):
                m = len(target)
                ids[b, offset : offset + m] = torch.tensor(target, dtype=torch.long)
                position_ids[b, offset : offset + m] = torch.arange(n, n + m)
                segments[b, offset : offset + m] = t + 1
                # target token k (row position offset + k, sequence position n + k) is predicted by the previous
                # token of its own branch: the context's last token for k == 0; none if the context is empty
                for k in range(m):
                    if n + k == 0:
                        continue
                    rows.append(b)
                    positions.append(offset + k - 1 if k > 0 else n - 1)
                    labels.append(target[k])
                    owners.append((b, t))
                offset += m
        results = [
            (np.zeros(len(u.targets), dtype=np.float64), np.zeros(len(u.targets), dtype=np.int64)) for u in units
        ]
        for b, t in owners:
            results[b][1][t] += 1
        if not rows:
            return results
        valid = segments >= 0
        if tree:
            same = (segments[:, :, None] == segments[:, None, :]) | (segments[:, None, :] == 0)
            causal = torch.ones(longest, longest, dtype=torch.bool).tril()
            mask = same & causal & valid[:, None, :]
            # padding rows attend to themselves, so no row is fully masked (that would give NaN)
            mask |= torch.eye(longest, dtype=torch.bool)[None] & ~valid[:, :, None]
            inputs = {"attention_mask": mask[:, None].to(self.device), "position_ids": position_ids.to(self.device)}
        elif self.padding_mask:
            inputs = {"attention_mask": valid.long().to(self.device)}
        else:
            inputs = {}
        inputs["input_ids"] = ids.to(self.device)
        args = (
            inputs,
            torch.tensor(rows, device=self.device),
            torch.tensor(positions, device=self.device),
            torch.tensor(labels, device=self.device),
        )
        logprobs = (self._logprobs_fast(*args) if self.fast else self._logprobs_full(*args)).double().cpu().numpy()
        for (b, t), value in zip(owners, logprobs, strict=True):
            results[b][0][t] += value
        return results


def score_requests(
    model: Any,
    requests: Sequence[ScoringRequest],
    *,
    token_budget: int = 8192,
    max_batch_size: int = 64,
    show_progress: bool = False,
    desc: str = "scoring",
) -> tuple[np.ndarray, np.ndarray]:
    """(sum_logprob float64 (n,), n_tokens int64 (n,)) per request, in input order.

    ``n_tokens`` is the number of scored target tokens: all of them, except that the first token of a request
    with an empty context (no BOS either) has nothing to be predicted from and is skipped. The mean
    log-probability is ``sum / n_tokens`` (undefined for 0 tokens: the caller decides).

    Identical requests are scored once, and requests that share a context (one passage, several reference
    answers) share its forward pass.

    Args:
        model: a Hugging Face causal LM (eval mode; its device and dtype are used as they are).
        requests: the (context, target) token ids.
        token_budget: at most ``batch size x longest row`` tokens per forward pass (memory bound).
        max_batch_size: at most this many rows per forward pass.
        show_progress: draw a tqdm bar over requests.
        desc: the bar's label.
    """
    n = len(requests)
    sums = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    if n == 0:
        return sums, counts
    units: list[_Unit] = []
    unit_of_context: dict[tuple[int, ...], int] = {}
    slot: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[int, int]] = {}
    owner: list[tuple[int, int]] = []
    for request in requests:
        context, target = tuple(request.context_ids), tuple(request.target_ids)
        key = (context, target)
        if key not in slot:
            u = unit_of_context.get(context)
            if u is None or len(units[u]) + len(target) > token_budget:
                # a context with too many targets for one row is split into several units
                u = len(units)
                units.append(_Unit(context, []))
                unit_of_context[context] = u
            units[u].targets.append(target)
            slot[key] = (u, len(units[u].targets) - 1)
        owner.append(slot[key])
    batches = plan_batches([len(u) for u in units], token_budget, max_batch_size)
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(units)
    progress = None
    if show_progress:
        from llm_embedder.utils.progress import progress

        progress = progress(total=sum(len(u.targets) for u in units), desc=desc, unit="req", dynamic_ncols=True)
    try:
        with torch.inference_mode(), precision_context(model, model_device(model)):
            scorer = _Scorer(model)
            for batch in batches:
                for index, result in zip(batch, scorer.score_units([units[k] for k in batch]), strict=True):
                    results[index] = result
                if progress is not None:
                    progress.update(sum(len(units[k].targets) for k in batch))
    finally:
        if progress is not None:
            progress.close()
    for i, (u, t) in enumerate(owner):
        unit_sums, unit_counts = results[u]  # type: ignore[misc]
        sums[i] = unit_sums[t]
        counts[i] = unit_counts[t]
    return sums, counts
