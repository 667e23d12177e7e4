"""Sibling Linear layers that read the same input run as one matrix product.

A decoder layer computes its query, key and value projections from one normed hidden state, and a gated MLP its
gate and up projections from another. Run separately, each is a small product (576 x 192 for SmolLM2's keys) and,
under bf16 autocast, each casts the same float32 input to bf16 again. Run as one product over the concatenated
weights, the input is cast once and the product is wider, which a CPU's matrix kernels run more efficiently: on
the AMX VM, 1,000 rows of SmolLM2, the gate and up projections take 2.74 ms fused against 3.43 ms apart, the
query, key and value 1.03 against 1.11 ms; the whole scorer 5-8% less CPU time on chat, lrlm and icl, nothing
measurable on qa (``benchmarks/README.md``). What inference engines do (vLLM's ``QKVParallelLinear``, llama.cpp's fused QKV);
here done on a loaded transformers model without touching its code.

Which layers are siblings is observed, not assumed: :func:`fuse_sibling_linears` runs the model once with hooks
and fuses a group (``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``) only where every member received
the very same input tensor, once. A cross-attention layer whose key and value read another sequence stays as it
was. Each member is replaced by a :class:`SiblingOutput` that returns its columns of the shared product; the
product is computed when the first member asks for an input it has not seen and dropped once every member has
taken its part (per thread: two threads running the model each get their own). The fused model is for running:
its state dict names the concatenated weights (``fused_q_k_v.weight``), which transformers would not load back,
so save a model loaded in ``fp32``, never a fused one.

The fused product rounds like the separate ones (bf16 inputs, float32 accumulation) but not bit for bit like them:
the kernel blocks a wider output differently, a few activations round to the other bf16 neighbour and the
difference travels through the layers. On the benchmark's records a reward moved by up to 0.08 nats (qa: a mean
over 1-3 answer tokens) - bf16's own rounding noise, not a bias: the fused path is as close to fp32 as the
separate one (``benchmarks/README.md``), within ``bf16-mixed``'s tolerance of 0.15 nats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIBLING_GROUPS", "SharedProduct", "SiblingOutput", "fuse_sibling_linears"]

#: the groups looked for, by the attribute names of transformers' decoders (Llama, Mistral, Qwen, Gemma, SmolLM)
SIBLING_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedProduct(nn.Module):
    """The concatenated weights (and biases) of a sibling group and the last product computed with them."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]), requires_grad=False)
        biases = [m.bias for m in linears]
        self.bias = (
            nn.Parameter(torch.cat([b.detach() for b in biases]), requires_grad=False)  # type: ignore[misc]
            if all(b is not None for b in biases)
            else None
        )
        self.sizes = [m.out_features for m in linears]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        # per thread: the input of the last product and the parts not yet taken (a model may run in two threads)
        self._cache: dict[int, tuple[torch.Tensor, list[torch.Tensor | None]]] = {}

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member ``index``'s output for input ``x``: from the product this thread already computed for this very
        tensor, or from a new one."""
        thread = threading.get_ident()
        cached = self._cache.get(thread)
        if cached is None or cached[0] is not x or cached[1][index] is None:
            cached = (x, list(F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)))
            self._cache[thread] = cached
        parts = cached[1]
        out = parts[index]
        assert out is not None
        parts[index] = None
        if all(p is None for p in parts):  # every member took its part: hold no activations between calls
            self._cache.pop(thread, None)
        return out


class SiblingOutput(nn.Module):
    """Stands in for one Linear layer of a fused group: its output is its columns of the group's product.

    ``weight``, ``bias``, ``in_features`` and ``out_features`` read as the replaced layer's did (views into the
    shared weights), for code that inspects them."""

    def __init__(self, shared: SharedProduct, index: int, in_features: int) -> None:
        super().__init__()
        object.__setattr__(self, "_shared", shared)  # not a submodule: its parameters belong to the parent once
        self.index = index
        self.in_features = in_features
        self.out_features = shared.sizes[index]

    @property
    def _rows(self) -> slice:
        """This member's rows of the shared weight and bias (its output columns of the product)."""
        shared: SharedProduct = self._shared
        return slice(shared.offsets[self.index], shared.offsets[self.index + 1])

    @property
    def weight(self) -> torch.Tensor:
        return self._shared.weight[self._rows]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self._shared.bias is None else self._shared.bias[self._rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared.part(x, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused"


def _candidates(model: nn.Module) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """Groups whose members are plain Linear layers of one shape family: same input size, dtype and device, and
    all with a bias or none."""
    found = []
    for parent in model.modules():
        for names in SIBLING_GROUPS:
            members = [getattr(parent, name, None) for name in names]
            if not all(type(m) is nn.Linear for m in members):
                continue
            first = members[0]
            if all(
                m.in_features == first.in_features
                and m.weight.dtype == first.weight.dtype
                and m.weight.device == first.weight.device
                and (m.bias is None) == (first.bias is None)
                for m in members
            ):
                found.append((parent, names))
    return found


def fuse_sibling_linears(model: nn.Module, run: Callable[[], Any]) -> int:
    """Fuse every sibling group of ``model`` whose members all read the same input when ``run()`` (one forward
    pass of the model, say) runs; returns the number of groups fused. Nothing is fused where the members read
    different tensors, ran more than once or did not run."""
    groups = _candidates(model)
    if not groups:
        return 0
    seen: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for parent, names in groups:
        for name in names:
            member = getattr(parent, name)
            hooks.append(
                member.register_forward_pre_hook(
                    lambda module, args: seen.setdefault(id(module), []).append(args[0]) if args else None
                )
            )
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    fused = 0
    for parent, names in groups:
        members = [getattr(parent, name) for name in names]
        inputs = [seen.get(id(m), []) for m in members]
        if not all(len(i) == 1 for i in inputs) or any(i[0] is not inputs[0][0] for i in inputs):
            continue
        shared = SharedProduct(members)
        parent.add_module("fused_" + "_".join(name.removesuffix("_proj") for name in names), shared)
        for index, name in enumerate(names):
            setattr(parent, name, SiblingOutput(shared, index, members[index].in_features))
        fused += 1
    return fused
