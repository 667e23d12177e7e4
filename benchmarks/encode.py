"""Encoding speed and retrieval quality of every inference path of ``LLMEmbedder``, against plain sentence-transformers.

Throughput: ``encode_keys`` on the first N passages of the qa corpus (``tasks/qa/corpus.jsonl``, keys rendered with
the qa key template and instruction), against ``SentenceTransformer.encode`` of the same strings with the same
model, batch size and max length - what a user would write without this package. All paths run in ONE process
and are interleaved chunk by chunk (the order rotates each chunk), so the drift of a shared machine hits every
path alike. Reported: texts per wall-clock second and texts per CPU second (process time, all threads; less
sensitive to other jobs on the machine), each as a ratio to sentence-transformers.

Quality: nDCG@10 (pytrec_eval) of the qa dev queries (``tasks/qa/dev.jsonl``) against the FULL qa corpus,
relevant = ``pos_index``, for every path; the deviation is relative to torch fp32.

    .venv/bin/python benchmarks/encode.py                     # 2,000 passages, batch 32, all paths
    .venv/bin/python benchmarks/encode.py --passages 500 --paths onnx-int8 --plot encode.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llm_embedder import LLMEmbedder, get_task
from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import load_records

DATA = Path(os.environ.get("LLM_EMBEDDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PATHS = ("torch-fp32", "torch-bf16", "onnx", "onnx-int8")
BASELINE = "sentence-transformers"


def build_paths(names: list[str], batch_size: int) -> dict[str, LLMEmbedder]:
    settings = {
        "torch-fp32": {"dtype": "fp32"},
        "torch-bf16": {"dtype": "bf16"},
        "onnx": {"backend": "onnx"},
        "onnx-int8": {"backend": "onnx-int8"},
    }
    # instructions on: the baseline encodes the same instructed strings (the bundled MiniLM alone would encode
    # plain text by default since issue 11)
    return {
        name: LLMEmbedder(device="cpu", batch_size=batch_size, use_instructions=True, **settings[name])
        for name in names
    }


def ndcg_at_10(queries: np.ndarray, keys: np.ndarray, relevant: list[list[int]], depth: int = 100) -> float:
    """Mean nDCG@10 of dense retrieval (inner product of normalised vectors) over the queries."""
    import pytrec_eval

    scores = queries @ keys.T
    top = np.argsort(-scores, axis=1)[:, :depth]
    run = {str(q): {str(int(d)): float(scores[q, d]) for d in top[q]} for q in range(len(queries))}
    qrels = {str(q): {str(d): 1 for d in rel} for q, rel in enumerate(relevant)}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    per_query = evaluator.evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in per_query.values()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=2000, help="passages for the throughput measurement")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (all paths)")
    parser.add_argument("--chunks", type=int, default=8, help="interleaving: the passages are cut into this many")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {', '.join(PATHS)}")
    parser.add_argument("--skip-quality", action="store_true", help="throughput only")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--plot", default=None, help="also draw the results into this PNG file")
    args = parser.parse_args()

    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    if "torch-fp32" not in names and not args.skip_quality:
        names.insert(0, "torch-fp32")  # the quality reference
    spec = get_task("qa")
    corpus = Corpus.from_file(DATA / "tasks" / "qa" / "corpus.jsonl", spec.key_template)
    passages = corpus.keys[: args.passages]

    import torch
    from sentence_transformers import SentenceTransformer

    from llm_embedder.model.loading import default_encoder_path

    baseline_model = SentenceTransformer(default_encoder_path(), device="cpu")
    embedders = build_paths(names, args.batch_size)
    max_length = embedders[names[0]].key_max_length
    assert baseline_model.max_seq_length == max_length, "same max length for every path"
    print(
        f"model: bundled all-MiniLM-L6-v2 | passages: {len(passages)} | batch size: {args.batch_size} | "
        f"max length: {max_length} | torch threads: {torch.get_num_threads()} | cpus: {len(os.sched_getaffinity(0))}"
    )

    encoders: dict[str, Callable[[list[str]], np.ndarray]] = {
        BASELINE: lambda texts: baseline_model.encode(
            texts, prompt=spec.key_instruction, batch_size=args.batch_size, normalize_embeddings=True
        )
    }
    for name, embedder in embedders.items():
        encoders[name] = lambda texts, e=embedder: e.encode_keys(texts, task="qa", show_progress_bar=False)
    # warm-up (first-call allocations, ORT session initialisation)
    for encode in encoders.values():
        encode(passages[:64])

    order = list(encoders)
    wall = dict.fromkeys(order, 0.0)
    cpu = dict.fromkeys(order, 0.0)
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in order}
    bounds = np.linspace(0, len(passages), args.chunks + 1).astype(int)
    for c in range(args.chunks):
        chunk = passages[bounds[c] : bounds[c + 1]]
        rotation = order[c % len(order) :] + order[: c % len(order)]
        for name in rotation:
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            vectors[name].append(encoders[name](chunk))
            wall[name] += time.perf_counter() - t_wall
            cpu[name] += time.process_time() - t_cpu
    results: dict[str, dict[str, float]] = {}
    for name in order:
        results[name] = {
            "texts_per_s": len(passages) / wall[name],
            "texts_per_cpu_s": len(passages) / cpu[name],
            "speedup_wall": wall[BASELINE] / wall[name],
            "speedup_cpu": cpu[BASELINE] / cpu[name],
        }
    reference = np.concatenate(vectors[BASELINE])
    for name in names:
        got = np.concatenate(vectors[name])
        results[name]["min_cosine_to_st"] = float((got * reference).sum(axis=1).min())

    if not args.skip_quality:
        records = load_records(DATA / "tasks" / "qa" / "dev.jsonl")
        queries = [r.query for r in records]
        relevant = [r.pos_index or [] for r in records]
        rest = corpus.keys[len(passages) :]
        for name, embedder in embedders.items():
            keys = (
                np.concatenate([*vectors[name], embedder.encode_keys(rest, task="qa")])
                if rest
                else np.concatenate(vectors[name])
            )
            results[name]["ndcg@10"] = ndcg_at_10(embedder.encode_queries(queries, task="qa"), keys, relevant)
        ref = results["torch-fp32"]["ndcg@10"]
        for name in names:
            results[name]["ndcg_rel_diff"] = results[name]["ndcg@10"] / ref - 1

    header = f"{'path':22s} {'texts/s':>8s} {'x ST':>6s} {'texts/cpu-s':>11s} {'x ST':>6s} {'min cos':>8s}"
    if not args.skip_quality:
        header += f" {'nDCG@10':>8s} {'vs fp32':>8s}"
    print(header)
    for name in order:
        r = results[name]
        line = f"{name:22s} {r['texts_per_s']:8.1f} {r['speedup_wall']:6.2f} {r['texts_per_cpu_s']:11.1f} "
        line += f"{r['speedup_cpu']:6.2f} {r.get('min_cosine_to_st', 1.0):8.4f}"
        if not args.skip_quality and "ndcg@10" in r:
            line += f" {r['ndcg@10']:8.4f} {100 * r['ndcg_rel_diff']:+7.2f}%"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(results, order, args.plot)


def plot(results: dict[str, dict[str, float]], order: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = np.arange(len(order))
    ax.bar(xs - 0.2, [results[n]["speedup_wall"] for n in order], 0.4, label="wall clock")
    ax.bar(xs + 0.2, [results[n]["speedup_cpu"] for n in order], 0.4, label="CPU time")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(2.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(xs, order, rotation=15)
    ax.set_ylabel("throughput / sentence-transformers")
    ax.set_title("encode_keys on qa passages (all-MiniLM-L6-v2, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
