"""Reward scoring speed per task: ``RewardScorer`` (default precision) against what a user would write, one run.

Baseline (what a user writes with transformers): the LM in fp32, ONE forward pass per (candidate, answer)
prompt, the model's full-vocabulary logits, log-softmax, the answer tokens' log-probabilities averaged. Ours:
``RewardScorer`` as ``llm-embedder score`` runs it - the LM at the scoring default precision
(``llm_embedder.lm.DEFAULT_SCORING_DTYPE``; bf16 autocast on CPUs), answer positions only get logits,
length-sorted batches under a token budget, a context shared by several answers run once (tree mask),
duplicates once. ``ours-fp32`` is the same scorer in fp32 (``--dtype fp32``): it must equal the baseline to 1e-4
(asserted), which shows that the batching devices change no score; the default's rewards are compared with
fp32 (max |difference|, Kendall tau of each record's candidate ranking, top-1 agreement).

All prompts are built once by ``RewardPromptBuilder`` (same token ids for every path). Baseline and ours run
in ABBA order on the same records (ours-fp32 once, in the first repeat), so a busy machine slows them alike;
wall and CPU seconds are both reported (CPU time is the steadier on a shared machine). Set ``OMP_NUM_THREADS``
for the whole run: with 2 threads on 2 busy cores the baseline's long element-wise loops over full-vocabulary
logits slow down far more than our matrix products, and the ratio measures the oversubscription instead
(benchmarks/README.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward.py                       # qa, chat, lrlm, icl
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward.py --sizes qa:32 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from llm_embedder.data.records import Record, load_records
from llm_embedder.lm.likelihood import ScoringRequest
from llm_embedder.lm.loading import load_causal_lm
from llm_embedder.lm.precision import DEFAULT_SCORING_DTYPE, resolve_dtype
from llm_embedder.reward.scorer import RewardScorer

DATA = Path(os.environ.get("LLM_EMBEDDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@torch.inference_mode()
def baseline(model, requests: list[ScoringRequest]) -> np.ndarray:
    """Mean log-prob of each request's target: one forward per prompt, full logits, log-softmax."""
    out = []
    for request in requests:
        ids = torch.tensor([request.context_ids + request.target_ids])
        logits = model(input_ids=ids).logits[0].float()
        n = len(request.context_ids)
        logprobs = torch.log_softmax(logits[n - 1 : -1], dim=-1)
        out.append(logprobs.gather(1, torch.tensor(request.target_ids)[:, None]).mean().item())
    return np.asarray(out)


def per_candidate(prepared, values: np.ndarray) -> list[np.ndarray]:
    """Per record, each candidate's reward: the mean over its answers (as ``RewardScorer`` does)."""
    out, offset = [], 0
    for prompts in prepared:
        scores = []
        for requests in prompts.requests:
            scores.append(float(np.mean(values[offset : offset + len(requests)])))
            offset += len(requests)
        out.append(np.asarray(scores))
    return out


def take(task: str, n: int, candidates: int) -> list[Record]:
    records = load_records(DATA / "tasks" / task / "dev.jsonl", task=task)[:n]
    for r in records:
        if r.uses_history:
            r.history = r.history[:candidates]
        else:
            r.pos, r.neg = r.pos[:candidates], r.neg[: max(0, candidates - len(r.pos[:candidates]))]
            r.pos_index = r.neg_index = None
    return records


#: the stated tolerance (nats of mean log-probability): a pair of candidates whose fp32 rewards differ by more
#: than this must keep its order (rewards themselves: within 0.15 nats, benchmarks/README.md)
TOLERANCE = 0.05


def swapped_beyond_tolerance(ours: np.ndarray, reference: np.ndarray) -> int:
    """Candidate pairs ordered differently than in fp32 although fp32 separates them by more than TOLERANCE."""
    n = len(reference)
    return sum(
        1
        for i in range(n)
        for j in range(i + 1, n)
        if abs(reference[i] - reference[j]) > TOLERANCE and (reference[i] - reference[j]) * (ours[i] - ours[j]) <= 0
    )


def agreement(ours: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    taus = [kendalltau(a, b).statistic for a, b in zip(ours, reference, strict=True)]
    return {
        "swapped": sum(swapped_beyond_tolerance(a, b) for a, b in zip(ours, reference, strict=True)),
        "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(ours, reference, strict=True)),
        "mean_diff": float(np.mean(np.concatenate([np.abs(a - b) for a, b in zip(ours, reference, strict=True)]))),
        "tau_mean": float(np.nanmean(taus)),
        "tau_min": float(np.nanmin(taus)),
        "top1": float(np.mean([a.argmax() == b.argmax() for a, b in zip(ours, reference, strict=True)])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", default="qa:6,chat:8,lrlm:3,icl:6", help="task:N - the first N dev records of each task"
    )
    parser.add_argument("--candidates", type=int, default=4, help="first N candidates of each record")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lm", default="smollm2")
    parser.add_argument("--dtype", default=DEFAULT_SCORING_DTYPE, help="precision of 'ours' (default: the default)")
    args = parser.parse_args()

    fp32, tokenizer = load_causal_lm(args.lm, dtype="fp32", device="cpu")
    args.dtype = resolve_dtype(args.dtype, "cpu")
    fast, _ = load_causal_lm(args.lm, dtype=args.dtype, device="cpu")
    print(
        f"LM {args.lm}, cpu, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}),"
        f" load average {os.getloadavg()[0]:.1f}; ours = {args.dtype}; {args.repeats} repeats"
    )
    header = (
        f"{'task':<6}{'rec':>4}{'cand':>5}{'prompts':>8}{'tokens':>8} | {'base s':>7}{'fp32 s':>7}{'ours s':>7}"
        f" | {'x wall':>7}{'x CPU':>7}{'fp32 x':>7} | {'max|d|':>7}{'mean|d|':>8}{'tau':>6}{'tau min':>8}"
        f"{'top1':>6}{'swaps':>6}"
    )
    rows = []
    for size in args.sizes.split(","):
        task, n = size.split(":")
        records = take(task, int(n), args.candidates)
        scorer = RewardScorer(fp32, tokenizer, task=task)
        prepared = [scorer.prepare(r) for r in records]
        requests = [q for p in prepared for q in p.flat]
        paths = {
            "base": lambda requests=requests: baseline(fp32, requests),
            "fp32": lambda t=task, p=prepared: RewardScorer(fp32, tokenizer, task=t).score_prepared(p),
            "ours": lambda t=task, p=prepared: RewardScorer(fast, tokenizer, task=t).score_prepared(p),
        }
        wall = {name: [] for name in paths}
        cpu = {name: [] for name in paths}
        results = {}
        for repeat in range(args.repeats):
            # base and ours alternate (ABBA); ours-fp32 runs once, for the exactness check and the agreement figures
            order = ["base", "ours"] if repeat % 2 == 0 else ["ours", "base"]
            if repeat == 0:
                order.insert(1, "fp32")
            for name in order:
                w, c = time.perf_counter(), time.process_time()
                results[name] = paths[name]()
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
        base = per_candidate(prepared, results["base"])
        exact = [np.asarray(s) for s in results["fp32"]]
        ours = [np.asarray(s) for s in results["ours"]]
        exact_diff = agreement(exact, base)["max_diff"]
        assert exact_diff < 1e-4, f"{task}: fp32 RewardScorer differs from the baseline by {exact_diff}"
        agree = agreement(ours, exact)
        per_repeat = [b / o for b, o in zip(wall["base"], wall["ours"], strict=True)]
        row = (
            f"{task:<6}{len(records):>4}{sum(len(r.candidates) for r in records):>5}{len(requests):>8}"
            f"{sum(len(q) for q in requests):>8} | {sum(wall['base']):>7.1f}{sum(wall['fp32']):>7.1f}"
            f"{sum(wall['ours']):>7.1f} | {sum(wall['base']) / sum(wall['ours']):>6.2f}x"
            f"{sum(cpu['base']) / sum(cpu['ours']):>6.2f}x{wall['base'][0] / wall['fp32'][0]:>6.2f}x"
            f" | {agree['max_diff']:>7.3f}{agree['mean_diff']:>8.4f}{agree['tau_mean']:>6.2f}{agree['tau_min']:>8.2f}"
            f"{agree['top1']:>6.2f}{agree['swapped']:>6d}"
        )
        rows.append(row)
        print(f"{task}: per-repeat wall speed-up {', '.join(f'{x:.2f}x' for x in per_repeat)}", flush=True)
    print(header)
    for row in rows:
        print(row)
    print("x wall / x CPU: baseline / ours (sums over repeats); fp32 x: baseline / ours-fp32 (first repeat, wall);")
    print("base s / ours s: sums over repeats; fp32 s: one run.")
    print(
        "max|d| mean|d| tau tau min top1: ours vs fp32 per record (|reward difference|, Kendall tau, top-1 agreement)"
    )


if __name__ == "__main__":
    main()
