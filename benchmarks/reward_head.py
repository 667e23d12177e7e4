"""The LM head of ``bf16-mixed`` scoring: the centred bf16 product (the default) against a float32 head, one run.

Both paths run the same bf16-mixed decoder body on the same records in one process, alternated (A B A B), so
machine drift between runs does not enter the ratio; each is compared with fp32 scoring as ``benchmarks/reward.py``
compares the default (max / mean |reward difference|, Kendall tau, top-1 agreement, pairs swapped although fp32
separates them by more than 0.05 nats). The float32 head is what ``bf16-mixed`` ran before the centred head
(``lm.likelihood.centred_target_logprobs``); it is not offered as an option, so the script switches it off in the
scorer directly.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward_head.py                    # SmolLM2: qa, chat, lrlm, icl
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward_head.py --lm gemma3 --sizes icl:6
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from reward import agreement, take

from llm_embedder.lm import likelihood
from llm_embedder.lm.loading import load_causal_lm
from llm_embedder.reward.scorer import RewardScorer

CENTRED = likelihood._Scorer.centred_head
FLOAT32 = property(lambda self: False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="qa:6,chat:8,lrlm:3,icl:6", help="task:N - the first N dev records")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path per round (2 rounds)")
    parser.add_argument("--lm", default="smollm2")
    args = parser.parse_args()

    fp32, tokenizer = load_causal_lm(args.lm, dtype="fp32", device="cpu")
    mixed, _ = load_causal_lm(args.lm, dtype="bf16-mixed", device="cpu")
    print(
        f"LM {args.lm}, {torch.get_num_threads()} thread(s); process CPU seconds per scoring run, median of each path"
    )
    print(
        f"{'task':<6}{'f32 head s':>11}{'centred s':>10}{'speed-up':>9} | against fp32 scoring (max|d| mean|d| tau-min top1 swaps)"
    )
    for size in args.sizes.split(","):
        task, n = size.split(":")
        records = take(task, int(n), args.candidates)
        prepared = [RewardScorer(fp32, tokenizer, task=task).prepare(r) for r in records]
        exact = [np.asarray(s) for s in RewardScorer(fp32, tokenizer, task=task).score_prepared(prepared)]
        times: dict[str, list[float]] = {"float32": [], "centred": []}
        scores: dict[str, list[np.ndarray]] = {}
        try:
            for _ in range(2):
                for name, head in (("float32", FLOAT32), ("centred", CENTRED)):
                    likelihood._Scorer.centred_head = head
                    scorer = RewardScorer(mixed, tokenizer, task=task)
                    scorer.score_prepared(prepared)  # warm-up (the centred head's bf16 copy is made once)
                    for _ in range(args.repeats):
                        start = time.process_time()
                        out = scorer.score_prepared(prepared)
                        times[name].append(time.process_time() - start)
                    scores[name] = [np.asarray(s) for s in out]
        finally:
            likelihood._Scorer.centred_head = CENTRED
        a, b = (float(np.median(times[k])) for k in ("float32", "centred"))
        faith = []
        for name in ("float32", "centred"):
            f = agreement(scores[name], exact)
            faith.append(f"{f['max_diff']:.4f} {f['mean_diff']:.4f} {f['tau_min']:.2f} {f['top1']:.2f} {f['swapped']}")
        print(f"{task:<6}{a:>11.2f}{b:>10.2f}{a / b:>8.2f}x | float32 head {faith[0]} / centred {faith[1]}")


if __name__ == "__main__":
    main()
