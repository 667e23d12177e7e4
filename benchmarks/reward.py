"""Reward scoring speed: ``RewardScorer`` against a reference-style scorer, same LM, same records, one run.

Reference style (how the research code scores): one prompt per (candidate, answer), fixed batches of 4 in input
order (no length sorting), the model's full-vocabulary logits for every position, then cross-entropy over the
answer positions. Ours: only answer positions get logits, length-bucketed batches under a token budget, shared
contexts (several answers) run once, duplicates scored once. Both use the same token ids (built by the same
``RewardPromptBuilder``) and right padding, so the scores must agree to 1e-4 in fp32; the script asserts it.
(The reference pads on the left without position ids, which shifts positions - we do not copy that part.)

The two scorers run ABBA on two halves of the records, so slow drift of a shared machine hurts both alike.

    .venv/bin/python benchmarks/reward.py                       # 32 qa dev records x 4 candidates, SmolLM2
    .venv/bin/python benchmarks/reward.py --records 32 --candidates 21 --file tasks/chat/dev.jsonl --task chat
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from llm_embedder.data.records import load_records
from llm_embedder.lm.likelihood import ScoringRequest
from llm_embedder.lm.loading import load_causal_lm
from llm_embedder.reward.scorer import RewardScorer

DATA = Path(os.environ.get("LLM_EMBEDDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@torch.inference_mode()
def reference_style(model, requests: list[ScoringRequest], *, pad_id: int, batch_size: int = 4) -> np.ndarray:
    """Mean log-prob of each request's target: fixed batches, input order, full logits + cross-entropy."""
    out = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        seqs = [r.context_ids + r.target_ids for r in batch]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(batch), longest), pad_id)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        labels = torch.full((len(batch), longest), -100)
        for b, (r, s) in enumerate(zip(batch, seqs, strict=True)):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
            labels[b, len(r.context_ids) : len(s)] = torch.tensor(r.target_ids)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none"
        ).view(len(batch), -1)
        counts = (labels[:, 1:] != -100).sum(-1)
        out.extend((-loss.sum(-1) / counts).double().tolist())
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default="tasks/qa/dev.jsonl", help="records, relative to the data folder")
    parser.add_argument("--task", default="qa")
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=4, help="first N candidates of each record")
    parser.add_argument("--lm", default="smollm2")
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()

    records = load_records(DATA / args.file, task=args.task)[: args.records]
    for r in records:
        if r.uses_history:
            r.history = r.history[: args.candidates]
        else:
            r.pos, r.neg = r.pos[: args.candidates], r.neg[: max(0, args.candidates - len(r.pos))]
            r.pos_index = r.neg_index = None
    model, tokenizer = load_causal_lm(args.lm, device="cpu")
    scorer = RewardScorer(
        model,
        tokenizer,
        task=args.task,
        token_budget=args.token_budget,
        max_batch_size=args.max_batch_size,
    )
    pad_id = tokenizer.pad_token_id or 0
    halves = [records[: len(records) // 2], records[len(records) // 2 :]]
    timing = {"ours": 0.0, "reference": 0.0}
    ours: dict[int, list[list[float]]] = {}
    refs: dict[int, np.ndarray] = {}
    requests: dict[int, list[ScoringRequest]] = {}
    for half, order in ((0, ("ours", "reference")), (1, ("reference", "ours"))):
        for name in order:
            start = time.perf_counter()
            if name == "ours":
                ours[half] = scorer.score(halves[half])
            else:
                prepared = [scorer.prepare(r) for r in halves[half]]
                requests[half] = [q for p in prepared for q in p.flat]
                refs[half] = reference_style(model, requests[half], pad_id=pad_id)
            timing[name] += time.perf_counter() - start

    # the reference's per-request means, averaged per candidate over answers as RewardScorer does
    max_diff = 0.0
    candidates = 0
    for half in (0, 1):
        offset = 0
        prepared = [scorer.prepare(r) for r in halves[half]]
        for prompts, scores in zip(prepared, ours[half], strict=True):
            for per_candidate, score in zip(prompts.requests, scores, strict=True):
                ref = float(np.mean(refs[half][offset : offset + len(per_candidate)]))
                offset += len(per_candidate)
                max_diff = max(max_diff, abs(ref - score))
                candidates += 1
    n_requests = sum(len(v) for v in requests.values())
    tokens = sum(len(q) for v in requests.values() for q in v)
    print(
        f"LM {args.lm} (fp32, cpu, {torch.get_num_threads()} threads); {args.file}: {len(records)} records, "
        f"{candidates} candidates, {n_requests} (candidate, answer) prompts, {tokens} tokens"
    )
    print(f"{'scorer':<12}{'seconds':>10}{'candidates/s':>15}")
    for name in ("reference", "ours"):
        print(f"{name:<12}{timing[name]:>10.1f}{candidates / timing[name]:>15.2f}")
    print(f"speed-up ours / reference: {timing['reference'] / timing['ours']:.2f}x; max |score diff| {max_diff:.2e}")
    assert max_diff < 1e-4, f"scores differ by {max_diff}"


if __name__ == "__main__":
    main()
