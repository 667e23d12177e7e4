"""One change to ``bf16-mixed`` scoring, before against after, in one process: which is faster, and is it as
faithful to fp32? One run.

Both paths score the same records with the same bf16-mixed decoder, run by run in A B B A order, so machine
drift between runs does not enter the ratio (``benchmarks/reward.py``'s ratios moved by 6-20% between runs on one
VM); each is compared with fp32 scoring as ``benchmarks/reward.py`` compares the default (max / mean |reward
difference|, Kendall tau, top-1 agreement, pairs swapped although fp32 separates them by more than 0.05 nats).
The "before" paths are not offered as options, so the script switches them on in the library directly:

* ``head``: the LM head over the answer rows in float32 (before) or as the centred bf16 product
  (``lm.likelihood.centred_target_logprobs``, the default);
* ``fused``: the query / key / value and gate / up projections as separate products (before) or fused
  (``lm.fused``, the default);
* ``lse``: the log-sum-exp over the whole (rows x vocabulary) slice at once (before) or in row blocks that stay
  in cache (``lm.likelihood.logsumexp_rows``, the default; the same numbers bit for bit);
* ``mask``: rows of one context and one target with a padding mask (before) or none, under the model's causal
  mask alone (``lm.likelihood._Scorer.padding_mask``, the default; exact: padding is on the right).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward_ab.py --change head                # SmolLM2: qa, chat, lrlm, icl
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward_ab.py --change fused --lm gemma3 --sizes icl:6
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from reward import agreement, take

from llm_embedder.lm import likelihood, precision
from llm_embedder.lm.loading import load_causal_lm
from llm_embedder.reward.scorer import RewardScorer

CENTRED = likelihood._Scorer.centred_head
LSE_BLOCK_BYTES = likelihood._LSE_BLOCK_BYTES
PADDING_MASK = likelihood._Scorer.padding_mask
#: per change: the names of its two paths, before and after
CHANGES = {
    "head": ("float32 head", "centred head"),
    "fused": ("separate", "fused"),
    "lse": ("whole slice", "row blocks"),
    "mask": ("padding mask", "causal only"),
}


@contextlib.contextmanager
def before(change: str) -> Iterator[None]:
    """The library as it scored before ``change`` (for ``fused`` the model differs instead: :func:`separate`)."""
    try:
        if change == "head":
            likelihood._Scorer.centred_head = property(lambda self: False)  # type: ignore[method-assign,assignment]
        elif change == "lse":
            likelihood._LSE_BLOCK_BYTES = 1 << 62
        elif change == "mask":
            likelihood._Scorer.padding_mask = True
        yield
    finally:
        likelihood._Scorer.centred_head = CENTRED  # type: ignore[method-assign]
        likelihood._LSE_BLOCK_BYTES = LSE_BLOCK_BYTES
        likelihood._Scorer.padding_mask = PADDING_MASK


def separate(lm: str) -> Any:
    """The LM as ``bf16-mixed`` loads it, but with its projections left apart (no ``lm.fused``)."""
    model, _ = load_causal_lm(lm, dtype="fp32", device="cpu")
    precision._store_linear_weights(model, torch.bfloat16)
    precision._AUTOCAST[model] = torch.bfloat16
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--change", choices=sorted(CHANGES), default="head")
    parser.add_argument("--sizes", default="qa:6,chat:8,lrlm:3,icl:6", help="task:N - the first N dev records")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each path: 2 x this many, in A B B A order"
    )
    parser.add_argument("--lm", default="smollm2")
    args = parser.parse_args()

    fp32, tokenizer = load_causal_lm(args.lm, dtype="fp32", device="cpu")
    mixed, _ = load_causal_lm(args.lm, dtype="bf16-mixed", device="cpu")
    old_model = separate(args.lm) if args.change == "fused" else mixed
    old, new = CHANGES[args.change]
    print(
        f"LM {args.lm}, {torch.get_num_threads()} thread(s), change {args.change!r}: {old} -> {new}; process CPU "
        "seconds per scoring run, median of each path"
    )
    print(
        f"{'task':<6}{'before s':>9}{'after s':>8}{'speed-up':>9} | against fp32 scoring (max|d| mean|d| tau-min top1 swaps)"
    )
    for size in args.sizes.split(","):
        task, n = size.split(":")
        records = take(task, int(n), args.candidates)
        prepared = [RewardScorer(fp32, tokenizer, task=task).prepare(r) for r in records]
        exact = [np.asarray(s) for s in RewardScorer(fp32, tokenizer, task=task).score_prepared(prepared)]
        times: dict[str, list[float]] = {"before": [], "after": []}
        scores: dict[str, list[np.ndarray]] = {}
        paths = {
            "before": (RewardScorer(old_model, tokenizer, task=task), lambda: before(args.change)),
            "after": (RewardScorer(mixed, tokenizer, task=task), contextlib.nullcontext),
        }
        for pair in range(-1, 2 * args.repeats):  # pair -1 warms both up (the centred head's bf16 copy is made once)
            for name in ("before", "after") if pair % 2 == 0 else ("after", "before"):  # A B B A ...
                scorer, patch = paths[name]
                with patch():
                    start = time.process_time()
                    out = scorer.score_prepared(prepared)
                    if pair >= 0:
                        times[name].append(time.process_time() - start)
                scores[name] = [np.asarray(s) for s in out]
        a, b = (float(np.median(times[k])) for k in ("before", "after"))
        faith = []
        for name in ("before", "after"):
            f = agreement(scores[name], exact)
            faith.append(f"{f['max_diff']:.4f} {f['mean_diff']:.4f} {f['tau_min']:.2f} {f['top1']:.2f} {f['swapped']}")
        between = max(float(np.abs(x - y).max()) for x, y in zip(scores["before"], scores["after"], strict=True))
        print(
            f"{task:<6}{a:>9.2f}{b:>8.2f}{a / b:>8.2f}x | {old} {faith[0]} / {new} {faith[1]}; "
            f"max|before - after| {between:.4f}"
        )


if __name__ == "__main__":
    main()
