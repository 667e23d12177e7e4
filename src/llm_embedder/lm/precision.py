"""The numeric precision a causal LM runs in: the names users pass (``--dtype``) and what each one does.

* ``fp32`` - float32 weights and arithmetic: the exact reference every other choice is measured against.
* ``bf16-mixed`` - matrix products and attention in bfloat16 under ``torch.autocast``; norms, softmax, rotary
  embeddings and the residual stream stay float32, and so do the embeddings and the LM head's weights. The scorer
  runs the head on the answer rows as a bf16 product that rounds each logit's distance from the row's target logit
  instead of the logit itself (``lm.likelihood.centred_target_logprobs``; a softcapped head runs in float32). On
  a CPU with native BF16 instructions (AVX512-BF16, AMX) it scores 2.6-2.8x faster than fp32 on the same batches
  (AMX), rewards within 0.15 nats, and no two candidates whose fp32 rewards differ by more than 0.05 nats swap
  places (``benchmarks/README.md``); without such instructions bf16 is emulated and slower than fp32. The
  decoder's Linear weights are stored in bf16 once, at load (:func:`set_precision`): autocast under
  ``torch.inference_mode`` keeps no cache and would cast every float32 weight again on every call (17-19% of CPU
  scoring time); the products are bit for bit the same. The query, key and value projections of each layer, and
  the gate and up projections of its MLP, then run as one product each (``lm.fused``: the input cast once, a
  wider product; 5-8% less scoring time on chat, lrlm and icl; rewards as close to fp32 as with the separate
  products).
* ``bf16`` / ``fp16`` - the weights themselves in that type: the usual choice on GPUs. On a CPU ``bf16`` is no
  faster than ``bf16-mixed`` and about twice as far from fp32 (the residual stream is rounded to bf16 too).
* ``auto`` - ``bf16-mixed`` where bf16 is native (CUDA with bf16 support, or a CPU with BF16 instructions),
  else ``fp32``. The scoring default: the fastest choice whose rewards rank candidates like fp32.

int8 (dynamic quantisation of the Linear layers, per-channel weights) was measured too and is not offered: on
SmolLM2-135M it moved mean log-probabilities by up to 4.1 nats and changed the best candidate of 2 of 8 qa
records (Kendall tau to fp32 0.46).

The autocast of a ``*-mixed`` model is recorded against the model object (:func:`set_precision`) and entered by
whoever runs it (:func:`precision_context`): a ``bf16-mixed`` model runs only inside that context (its Linear
weights are bf16, its embeddings float32).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llm_embedder.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: `llm-embedder score --help` must not load it
    import torch

#: every name ``--dtype`` accepts for an LM
LM_DTYPES = ("auto", "fp32", "bf16-mixed", "bf16", "fp16")
#: what ``llm-embedder score`` and the pipeline's score stage use unless told otherwise
DEFAULT_SCORING_DTYPE = "auto"

_AUTOCAST: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def default_device() -> str:
    """Where an LM goes when the caller does not say: the GPU if there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_is_native(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products in hardware (so bf16 is a speed-up, not an emulation)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
            return False
    return False


def resolve_dtype(dtype: str, device: str | torch.device) -> str:
    """The concrete precision name for ``dtype`` on ``device`` (``auto`` decided; anything unknown refused)."""
    if dtype not in LM_DTYPES:
        raise UserError(f"unknown dtype {dtype!r}", hint=f"choose one of {', '.join(LM_DTYPES)}")
    if dtype == "auto":
        return "bf16-mixed" if bf16_is_native(device) else "fp32"
    return dtype


def weight_dtype(dtype: str) -> torch.dtype:
    """The torch dtype the weights are loaded in for a concrete precision name."""
    import torch

    weights = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mixed": torch.float32}
    return weights[dtype]


def _store_linear_weights(model: Any, dtype: torch.dtype) -> None:
    """Every Linear layer of ``model`` but its LM head holds its weights (and bias) in ``dtype``.

    Why: autocast casts a float32 weight to bf16 on every call, and under ``torch.inference_mode`` it keeps no
    cache, so each forward re-read and re-wrote every weight (17-19% of scoring time on CPU). A weight stored in
    bf16 is the same rounding done once: the products are bit for bit those of autocast. The LM head (tied to the
    embeddings in small LMs) stays float32: the scorer runs it in float32 on the answer rows.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head and module.weight.dtype == torch.float32:
            module.to(dtype)


def set_precision(model: Any, dtype: str) -> None:
    """Record how ``model`` runs: ``bf16-mixed`` makes :func:`precision_context` enter bf16 autocast.

    For ``bf16-mixed`` the Linear weights are stored in bf16 (:func:`_store_linear_weights`) and sibling
    projections fused (:func:`_fuse_siblings`); the model then runs only inside :func:`precision_context`.
    """
    import torch

    if dtype == "bf16-mixed":
        _store_linear_weights(model, torch.bfloat16)
        _AUTOCAST[model] = torch.bfloat16
        _fuse_siblings(model)
    else:
        _AUTOCAST.pop(model, None)


def _fuse_siblings(model: Any) -> int:
    """Fuse the query / key / value and gate / up projections of a ``bf16-mixed`` model into one product each
    (``lm.fused``: 5-8% of scoring time on CPU), observed on :func:`probe_forward`."""
    from llm_embedder.lm.fused import fuse_sibling_linears

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        return 0
    device = embeddings.weight.device
    return fuse_sibling_linears(model, lambda: probe_forward(model, device))


def probe_forward(model: Any, device: torch.device) -> Any:
    """One forward pass of ``model`` over 5 tokens, in its precision: the tiny input on which the loader
    (:func:`_fuse_siblings`) and the scorer (its fast-path check) observe how the model computes."""
    import torch

    ids = torch.arange(5, device=device).remainder(model.get_input_embeddings().weight.shape[0]).unsqueeze(0)
    with precision_context(model, device):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def autocast_dtype(model: Any) -> torch.dtype | None:
    """The autocast dtype recorded for ``model`` (``None``: it runs in its weights' own dtype)."""
    try:
        return _AUTOCAST.get(model)
    except TypeError:  # not weak-referenceable
        return None


@contextlib.contextmanager
def precision_context(model: Any, device: torch.device) -> Iterator[None]:
    """Run ``model`` in its recorded precision (bf16 autocast for ``bf16-mixed``; nothing otherwise)."""
    import torch

    dtype = autocast_dtype(model)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
