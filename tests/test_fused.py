"""Sibling Linear layers fused into one product (``lm.fused``): the same outputs as the separate layers, fused
only where the members really read one input, no stale product served for another input."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from llm_embedder.lm import precision
from llm_embedder.lm.fused import SharedProduct, SiblingOutput, fuse_sibling_linears
from llm_embedder.lm.loading import load_causal_lm
from llm_embedder.reward import RewardScorer
from tests.test_reward import lm_folder, sample_records, tokenizer  # noqa: F401 - shared fixtures


class Attention(nn.Module):
    """q, k and v from one input (self-attention) or k and v from another (cross-attention)."""

    def __init__(self, bias: bool = False, cross: bool = False, twice: bool = False) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 6, bias=bias)
        self.k_proj = nn.Linear(8, 4, bias=bias)
        self.v_proj = nn.Linear(8, 4, bias=bias)
        self.cross, self.twice = cross, twice

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        source = other if self.cross and other is not None else x
        q = self.q_proj(x)
        if self.twice:
            q = q + self.q_proj(x)
        return torch.cat([q, self.k_proj(source), self.v_proj(source)], dim=-1)


def _outputs(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(*inputs)


def test_self_attention_projections_fuse_into_one_product_with_the_same_outputs():
    torch.manual_seed(0)
    for bias in (False, True):
        module = Attention(bias=bias)
        x, y = torch.randn(3, 5, 8), torch.randn(2, 8)
        expected_x, expected_y = _outputs(module, x), _outputs(module, y)
        weights = [module.q_proj.weight.detach().clone(), module.k_proj.weight.detach().clone()]
        k_bias = None if module.k_proj.bias is None else module.k_proj.bias.detach().clone()
        assert fuse_sibling_linears(module, lambda m=module: m(torch.randn(1, 8))) == 1
        assert isinstance(module.q_proj, SiblingOutput) and isinstance(module.fused_q_k_v, SharedProduct)
        assert torch.allclose(_outputs(module, x), expected_x, atol=1e-6)
        assert torch.allclose(_outputs(module, y), expected_y, atol=1e-6)  # a new input: a new product
        # the members read as the layers they replace; the parameters are held once
        assert torch.equal(module.q_proj.weight, weights[0]) and torch.equal(module.k_proj.weight, weights[1])
        assert module.k_proj.bias is None if k_bias is None else torch.equal(module.k_proj.bias, k_bias)
        assert (module.v_proj.out_features, module.v_proj.in_features) == (4, 8)
        assert sum(p.numel() for p in module.parameters()) == 14 * 8 + (14 if bias else 0)
        assert module.fused_q_k_v._cache == {}  # every member took its part: no activations held


def test_a_product_is_never_served_for_another_input():
    """q with one tensor, then k and v with another (as a caller outside the observed forward might): each
    output is the member's own layer on its own input."""
    torch.manual_seed(1)
    module = Attention()
    plain = Attention()
    plain.load_state_dict(module.state_dict())
    fuse_sibling_linears(module, lambda: module(torch.randn(1, 8)))
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    with torch.inference_mode():
        assert torch.allclose(module.q_proj(a), plain.q_proj(a), atol=1e-6)
        assert torch.allclose(module.k_proj(b), plain.k_proj(b), atol=1e-6)
        assert torch.allclose(module.q_proj(a), plain.q_proj(a), atol=1e-6)  # asked twice for one input
        assert torch.allclose(module.v_proj(a), plain.v_proj(a), atol=1e-6)


def test_members_reading_different_inputs_or_running_twice_stay_apart():
    cross = Attention(cross=True)
    assert fuse_sibling_linears(cross, lambda: cross(torch.randn(1, 8), torch.randn(1, 8))) == 0
    assert type(cross.k_proj) is nn.Linear
    twice = Attention(twice=True)
    assert fuse_sibling_linears(twice, lambda: twice(torch.randn(1, 8))) == 0
    idle = Attention()
    assert fuse_sibling_linears(idle, lambda: None) == 0  # not observed: not fused


def test_bf16_mixed_fuses_every_layers_projections_and_fp32_stays_apart(lm_folder, data_dir):  # noqa: F811
    model, tok = load_causal_lm(str(lm_folder), dtype="bf16-mixed", device="cpu")
    layers = model.config.num_hidden_layers
    assert sum(isinstance(m, SharedProduct) for m in model.modules()) == 2 * layers
    for layer in model.model.layers:
        assert all(isinstance(getattr(layer.self_attn, n), SiblingOutput) for n in ("q_proj", "k_proj", "v_proj"))
        assert all(isinstance(getattr(layer.mlp, n), SiblingOutput) for n in ("gate_proj", "up_proj"))
        assert type(layer.mlp.down_proj) is nn.Linear  # reads the product of the two, alone
    exact, _ = load_causal_lm(str(lm_folder), dtype="fp32", device="cpu")
    assert not any(isinstance(m, SharedProduct) for m in exact.modules())
    # the same rewards, within bf16's rounding, as the separate products under the same autocast
    apart, _ = load_causal_lm(str(lm_folder), dtype="fp32", device="cpu")
    precision._store_linear_weights(apart, torch.bfloat16)
    precision._AUTOCAST[apart] = torch.bfloat16
    records = sample_records(data_dir, "qa", n=2, candidates=3)
    fused = RewardScorer(model, tok, task="qa", max_key_tokens=128).score(records)
    separate = RewardScorer(apart, tok, task="qa", max_key_tokens=128).score(records)
    for a, b in zip(fused, separate, strict=True):
        assert np.allclose(a, b, atol=0.02), (a, b)


def test_two_threads_running_the_model_each_get_their_own_products():
    """q in both threads first, then k and v: neither thread may take the other's product."""
    torch.manual_seed(2)
    module, plain = Attention(), Attention()
    plain.load_state_dict(module.state_dict())
    fuse_sibling_linears(module, lambda: module(torch.randn(1, 8)))
    inputs = [torch.randn(2, 8), torch.randn(2, 8)]
    barrier, results = threading.Barrier(2), [None, None]

    def run(i: int) -> None:
        with torch.inference_mode():
            q = module.q_proj(inputs[i])
            barrier.wait()  # the other thread has computed its product too
            results[i] = torch.cat([q, module.k_proj(inputs[i]), module.v_proj(inputs[i])], dim=-1)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert torch.allclose(results[i], _outputs(plain, inputs[i]), atol=1e-6)
