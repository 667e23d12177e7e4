"""lm.likelihood: selected-position scoring equals a plain full-vocabulary computation; batching; tokenising."""

from __future__ import annotations

import random

import pytest
import torch

from llm_embedder.lm.likelihood import (
    ScoringRequest,
    build_request,
    plan_batches,
    score_requests,
    tokenizer_adds_bos,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llm_embedder.lm import resolve_lm

    return AutoTokenizer.from_pretrained(resolve_lm("smollm2"))


def tiny_lm(vocab_size: int, **overrides):
    """A randomly initialised 2-layer Llama: quality is irrelevant here, the arithmetic is what is checked."""
    from lm_helpers import tiny_llama

    shape = {"num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024}
    return tiny_llama(vocab_size, **{**shape, "tie_word_embeddings": False, **overrides})


def naive_score(model, request: ScoringRequest) -> tuple[float, int]:
    """One request alone: full forward, full-vocabulary log-softmax at every position."""
    ids = request.context_ids + request.target_ids
    start = max(len(request.context_ids), 1)
    if start >= len(ids):
        return 0.0, 0
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logprobs[p - 1, ids[p]].item() for p in range(start, len(ids))), len(ids) - start


def random_requests(vocab: int, n: int = 40, seed: int = 0) -> list[ScoringRequest]:
    rng = random.Random(seed)
    contexts = [[rng.randrange(vocab) for _ in range(rng.randint(0, 40))] for _ in range(8)]
    requests = [
        ScoringRequest(list(rng.choice(contexts)), [rng.randrange(vocab) for _ in range(rng.randint(0, 9))])
        for _ in range(n)
    ]
    return requests + requests[:6]  # duplicates


@pytest.mark.parametrize(("budget", "batch"), [(8192, 64), (64, 4), (20, 2)])
def test_scores_equal_full_vocabulary_computation(budget, batch):
    model = tiny_lm(500)
    requests = random_requests(500)
    sums, counts = score_requests(model, requests, token_budget=budget, max_batch_size=batch)
    assert sums.dtype == "float64" and counts.dtype == "int64" and len(sums) == len(requests)
    for request, total, count in zip(requests, sums, counts, strict=True):
        expected, n = naive_score(model, request)
        assert count == n
        assert abs(total - expected) < 1e-4


def test_rows_of_one_target_run_under_the_causal_mask_alone(monkeypatch):
    """Rows of one context and one target carry no padding mask (padding is on the right, so the causal mask is
    exact): attention gets no mask tensor - its causal kernel - and the scores equal a padded, masked batch's
    and the naive computation."""
    from llm_embedder.lm import likelihood

    model = tiny_lm(500)
    rng = random.Random(3)
    requests = [
        ScoringRequest([rng.randrange(500) for _ in range(rng.randint(1, 40))], [rng.randrange(500) for _ in range(5)])
        for _ in range(12)  # distinct contexts of 1-40 tokens: one batch of single-target rows, padded
    ]
    masks: list[object] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    sums, counts = score_requests(model, requests)
    assert masks and all(mask is None for mask in masks)
    monkeypatch.setattr(likelihood._Scorer, "padding_mask", True)
    masks.clear()
    padded, _ = score_requests(model, requests)
    assert any(mask is not None for mask in masks)  # the same rows, padded under a mask
    for request, total, count, masked in zip(requests, sums, counts, padded, strict=True):
        expected, n = naive_score(model, request)
        assert count == n and abs(total - expected) < 1e-4 and abs(total - masked) < 1e-5


def test_logit_postprocessing_models_fall_back_to_their_own_logits():
    """A model whose forward changes the logits (softcapping, scaling...) must still be scored exactly."""
    from transformers import LlamaForCausalLM

    class ScaledLogits(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    base = tiny_lm(300)
    model = ScaledLogits(base.config).eval()
    model.load_state_dict(base.state_dict())
    requests = random_requests(300, n=10, seed=1)
    sums, _ = score_requests(model, requests)
    for request, total in zip(requests, sums, strict=True):
        assert abs(total - naive_score(model, request)[0]) < 1e-4


def test_bf16_is_close_to_fp32():
    model = tiny_lm(300)
    requests = random_requests(300, n=10, seed=2)
    fp32, _ = score_requests(model, requests)
    bf16, _ = score_requests(model.to(torch.bfloat16), requests)
    assert abs(bf16 - fp32).max() < 0.5


def test_centred_head_is_the_log_softmax_of_its_rounded_inputs_without_rounding_the_logits():
    """``bf16-mixed``'s LM head: a bf16 product whose output is each row's logits minus its target's logit. Against
    the log-softmax of the same bf16-rounded inputs computed in float64, it is within 0.003 nats where the target
    is the likeliest token (logits ~17 here), where rounding the logits themselves to bf16 misses by ~0.03; and it
    is never further off than that rounding when the target is unlikely."""
    from llm_embedder.lm.likelihood import centred_head_weight, centred_target_logprobs

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2000, 64, generator=g) * 0.6
    hidden = torch.randn(32, 64, generator=g)
    logits = hidden.bfloat16().double() @ weight.bfloat16().double().T
    rounded_logits = (hidden.bfloat16() @ weight.bfloat16().T).double()
    likeliest = logits.argmax(dim=-1)
    anything = torch.randint(0, 2000, (32,), generator=g)
    for labels, bound in ((likeliest, 0.003), (anything, None)):
        exact = torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
        plain = torch.log_softmax(rounded_logits, -1).gather(1, labels[:, None]).squeeze(1)
        centred = centred_target_logprobs(hidden, centred_head_weight(weight), labels).double()
        error, plain_error = (centred - exact).abs().max().item(), (plain - exact).abs().max().item()
        if bound is not None:
            assert error < bound < plain_error / 5, (error, plain_error)
        else:
            assert error <= plain_error * 1.1, (error, plain_error)


def test_the_centred_heads_bf16_copy_follows_its_weight():
    """The bf16 copy is made once per head, and again when the weight changes in place (a stale copy would score
    with the old head)."""
    from llm_embedder.lm.likelihood import _centred_head_weight

    head = torch.nn.Linear(8, 5, bias=False)
    first = _centred_head_weight(head)
    assert _centred_head_weight(head) is first and first.dtype == torch.bfloat16 and first.shape == (5, 16)
    assert torch.equal(first[:, 8:10], torch.ones(5, 2, dtype=torch.bfloat16)) and not first[:, 10:].any()
    with torch.no_grad():
        head.weight.mul_(2)
    again = _centred_head_weight(head)
    assert again is not first and torch.equal(again[:, :8], head.weight.bfloat16())


def test_logsumexp_in_row_blocks_equals_the_whole_slice_bit_for_bit(monkeypatch):
    """The log-sum-exp over the answer rows runs a few rows at a time to stay in cache; every row must come out
    exactly as ``torch.logsumexp`` gives it on the whole float32 slice, whatever the block size and dtype."""
    from llm_embedder.lm import likelihood

    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 3000, generator=g) * 4 - 9
    for block_bytes in (1, 4 * 3000, 4 * 3000 * 5, 1 << 30):  # 1 row, 1 row, 5 rows, everything at once
        monkeypatch.setattr(likelihood, "_LSE_BLOCK_BYTES", block_bytes)
        for values in (x, x.bfloat16()):
            got = likelihood.logsumexp_rows(values)
            assert got.dtype == torch.float32
            assert torch.equal(got, torch.logsumexp(values.float(), dim=-1)), block_bytes
    assert likelihood.logsumexp_rows(x[:0]).shape == (0,)


def test_plan_batches_respects_budget_and_is_deterministic():
    rng = random.Random(3)
    lengths = [rng.randint(1, 300) for _ in range(200)] + [5000]
    batches = plan_batches(lengths, token_budget=1024, max_batch_size=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 1024
    assert batches[0] == [200]  # longest first, alone over budget
    assert batches == plan_batches(lengths, token_budget=1024, max_batch_size=8)


def test_empty_inputs():
    model = tiny_lm(100)
    sums, counts = score_requests(model, [])
    assert len(sums) == len(counts) == 0
    sums, counts = score_requests(model, [ScoringRequest([1, 2], []), ScoringRequest([], [7])])
    assert list(sums) == [0.0, 0.0] and list(counts) == [0, 0]


def test_build_request_matches_one_go_tokenisation(tokenizer):
    """SmolLM2 (byte-level BPE): the seam space moves to the answer, so the ids equal tokenising the whole text."""
    request = build_request(tokenizer, "Question: capital of France?\n\nAnswer: ", "Paris")
    whole = tokenizer("Question: capital of France?\n\nAnswer: Paris", add_special_tokens=False)["input_ids"]
    assert request.context_ids + request.target_ids == whole
    assert request.target_ids == tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    # a newline is never moved: it belongs to the prompt
    request = build_request(tokenizer, "Review: great\n", "Positive")
    assert request.target_ids == tokenizer("Positive", add_special_tokens=False)["input_ids"]


def test_build_request_truncation_and_bos(tokenizer):
    context = " ".join(f"w{i}" for i in range(50))
    full = tokenizer(context, add_special_tokens=False)["input_ids"]
    left = build_request(tokenizer, context, "end", max_context_tokens=10)
    right = build_request(tokenizer, context, "end", max_context_tokens=10, truncate_context_from="right")
    assert left.context_ids == full[-10:] and right.context_ids == full[:10]
    # SmolLM2's bos is the chat marker <|im_start|> and its tokenizer does not add it: neither do we
    assert not tokenizer_adds_bos(tokenizer)
    assert build_request(tokenizer, "a", "b").context_ids[0] != tokenizer.bos_token_id
    forced = build_request(tokenizer, "a", "b", add_bos=True)
    assert forced.context_ids[0] == tokenizer.bos_token_id
    assert build_request(tokenizer, "", "b", add_bos=True).context_ids == [tokenizer.bos_token_id]


class _BosTokenizer:
    """A tokenizer that prepends BOS like Llama / Gemma do (ids = character codes)."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True, **kwargs):
        ids = [ord(c) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_bos_added_when_the_tokenizer_adds_it():
    tok = _BosTokenizer()
    assert tokenizer_adds_bos(tok)
    request = build_request(tok, "ab", "c")
    assert request.context_ids == [1, ord("a"), ord("b")] and request.target_ids == [ord("c")]
    # already there: not doubled
    assert build_request(tok, "\x01ab", "c").context_ids == [1, ord("a"), ord("b")]


def test_gemma_style_softcapping_and_sliding_window():
    """Gemma-3: final logit softcapping and sliding-window layers; shared contexts longer than the window too."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=2.0,
        tie_word_embeddings=False,
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # logits large enough for the softcap to matter
    requests = random_requests(300, n=20, seed=4)
    short = [ScoringRequest([1, 2, 3], [4, 5]), ScoringRequest([1, 2, 3], [6]), ScoringRequest([1, 2, 3], [7, 8])]
    for batch in (requests, short):  # long rows: one row per target; short rows: one tree row per context
        sums, _ = score_requests(model, batch)
        for request, total in zip(batch, sums, strict=True):
            assert abs(total - naive_score(model, request)[0]) < 1e-4
