"""Probe of docs/results.md ("Nor with longer training keys"): do multi-tool requests retrieve better when split
into sentences? Scores each tool by the mean of its similarity to the whole request and to the request's best
sentence, for the given embedder folders ("base" = the plain bundled encoder) and for BM25 (bm25s, English stop
words, Snowball stemming - the project's BM25), on tool dev against the tool corpus. Prints nDCG@5 whole / split.

    .venv/bin/python recipes/probes/tool_split.py runs/six-task/models/full base     # ~3 min a model on 2 cores
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from llm_embedder import LLMEmbedder
from llm_embedder.evaluation.metrics import mean_metrics, per_query_metrics

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tasks" / "tool"


def sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=[.?!])\s+", text) if part.strip()] or [text]


def ndcg5(scores: np.ndarray, qrels: dict[str, dict[str, int]]) -> float:
    run = {str(i): {str(j): float(row[j]) for j in np.argsort(-row)[:100]} for i, row in enumerate(scores)}
    return mean_metrics(per_query_metrics(run, qrels, ["ndcg@5"]).values())["ndcg@5"]


def fused(whole: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Per request: 0.5 * similarity to the whole request + 0.5 * the best sentence's similarity."""
    return np.stack([0.5 * w + 0.5 * p.max(0) for w, p in zip(whole, parts, strict=True)])


def main(models: list[str]) -> None:
    records = [json.loads(line) for line in (DATA / "dev.jsonl").open()]
    corpus = [json.loads(line)["text"] for line in (DATA / "corpus.jsonl").open()]
    qrels = {str(i): {str(row): 1 for row in r["pos_index"]} for i, r in enumerate(records)}
    queries = [r["query"] for r in records]
    split = [sentences(q) for q in queries]

    stemmer = Stemmer.Stemmer("english")
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)

    def bm25_scores(texts: list[str]) -> np.ndarray:
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)
        return np.stack([bm25.get_scores(t) for t in tokens])

    whole = bm25_scores(queries)
    print(
        f"bm25: whole {ndcg5(whole, qrels):.4f}, split {ndcg5(fused(whole, [bm25_scores(s) for s in split]), qrels):.4f}"
    )
    for name in models:
        embedder = LLMEmbedder(None, device="cpu", use_instructions=False) if name == "base" else LLMEmbedder(name)
        keys = embedder.encode(corpus, task="tool", side="key")
        whole = embedder.encode(queries, task="tool", side="query") @ keys.T
        flat = embedder.encode([s for parts in split for s in parts], task="tool", side="query") @ keys.T
        bounds = np.cumsum([0] + [len(parts) for parts in split])
        parts = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        print(f"{name}: whole {ndcg5(whole, qrels):.4f}, split {ndcg5(fused(whole, parts), qrels):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
