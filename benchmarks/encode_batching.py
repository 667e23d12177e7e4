"""How much batching can give the encoder itself, for short queries: the ceiling of the server's micro-batching.

``benchmarks/serve.py`` compares a server that batches concurrent requests with one that encodes each request on its
own; issue 13 asks for 3x. A server adds the same work per request in both modes (HTTP, validation, JSON, the store
search), which can only shrink the ratio, so the ratio of the encoder alone - one ``encode_queries`` call per query
against calls of ``batch`` queries, in this process, nothing else - is the ceiling. Queries: the qa dev questions
(as the server encodes them: the bundled base takes no instruction), the fastest CPU backend (onnx-int8, as ``serve --backend auto``), ONNX
Runtime's spin-waiting off as in ``serve``. Best of ``--repeats`` timings each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encode_batching.py            # what the serve benchmark runs with
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=256, help="qa dev queries (a multiple of 64)")
    parser.add_argument("--backend", default="onnx-int8", help="encoder runtime (default: what serve uses on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measure; the best is kept")
    args = parser.parse_args()
    os.environ.setdefault("LLM_EMBEDDER_ORT_SPIN", "0")

    from llm_embedder import LLMEmbedder

    embedder = LLMEmbedder(None, device="cpu", backend=args.backend)
    with open(DATA / "tasks" / "qa" / "dev.jsonl", encoding="utf-8") as handle:
        queries = [json.loads(line)["query"] for line in handle][: args.queries]
    # the bundled base was not trained with instructions, so (as in serve) it encodes the plain question
    texts = [embedder.instruction("qa", "query") + q for q in queries]
    lengths = [len(embedder.model.tokenizer(t)["input_ids"]) for t in texts]
    print(f"{len(queries)} qa dev queries, {min(lengths)}-{max(lengths)} tokens (median {statistics.median(lengths)})")

    def encode(chunk: list[str], batch: int) -> None:
        embedder.encode_queries(chunk, task="qa", batch_size=batch, show_progress_bar=False)

    encode(queries[:64], 64)  # warm-up
    half = len(queries) // 2
    single = best_seconds(lambda: [encode([q], 1) for q in queries[:half]], args.repeats) / half
    print(f"one call per query: {single * 1e3:.3f} ms per query")
    for batch in (8, 16, 32, 64):
        seconds = best_seconds(
            lambda b=batch: [encode(queries[i : i + 64], b) for i in range(0, len(queries), 64)], args.repeats
        )
        per_query = seconds / len(queries)
        print(f"calls of {batch:2d} queries:  {per_query * 1e3:.3f} ms per query = {single / per_query:.2f}x")


if __name__ == "__main__":
    main()
