"""``llm-embedder serve`` under load, against real server processes (uvicorn), from concurrent HTTP clients.

What is measured (all from this process with ``httpx.AsyncClient``, N concurrent clients each sending requests
back to back):

1. micro-batching vs one-request-one-encode: two servers on the same data, one started with ``--max-batch 64`` (the
   default: concurrent requests share encoder calls) and one with ``--max-batch 1`` (each request its own encoder
   call, what a plain "encode in the handler" server does); search at 64 clients, alternated A B A B;
2. server overhead: ``POST /v1/embeddings`` of one query from one client vs ``LLMEmbedder.encode_queries`` of the
   same text in this process (what a user would do without a server), alternated per block;
3. search, memory add and augment (knowledge top 3 + memory top 1, no LM) p50 / p95 / p99 at 1 / 8 / 64 clients,
   with ``--keys`` random unit vectors (texts from the qa corpus, cycled) in the searched collection, written
   straight through the store before the server starts;
4. bulk ingest: ``POST /v1/collections/{name}/documents`` with 64 real passages per request (2 clients) vs
   ``encode_keys`` of the same passages in this process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py --keys 100000 --json serve.json

The server processes get ``OMP_NUM_THREADS`` from the environment; on a shared machine figures are under contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

DATA = Path(os.environ.get("LLM_EMBEDDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One ``llm-embedder serve`` process on a free loopback port."""

    def __init__(self, data: Path, backend: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "llm_embedder.cli.main", "serve", "--data-dir", str(data)]
        command += [
            "--port",
            str(self.port),
            "--backend",
            backend,
            "--max-queue",
            "1024",
            "--log-level",
            "info",
            *extra,
        ]
        self.log = data.parent / f"server-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


async def load(url: str, clients: int, per_client: int, make_request: Any) -> dict[str, Any]:
    """``clients`` concurrent loops of ``per_client`` requests; ``make_request(client, i) -> (method, path, body)``."""
    latencies: list[float] = []
    errors: dict[Any, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:

        async def one(client: int) -> None:
            for i in range(per_client):
                method, path, body = make_request(client, i)
                start = time.perf_counter()
                try:
                    response = await http.request(method, path, json=body)
                except httpx.TransportError as exc:  # counted, not fatal: a busy machine drops connections
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall, "errors": errors,
            **percentiles(latencies)}  # fmt: skip


def run_load(url: str, clients: int, total: int, make_request: Any) -> dict[str, Any]:
    return asyncio.run(load(url, clients, max(1, total // clients), make_request))


def fill_store(data: Path, embedder: Any, keys: int, passages: list[dict[str, str]], index: str, seed: int = 0) -> None:
    """``keys`` random unit vectors with corpus texts in collection ``kb`` (qa), through the store itself."""
    from llm_embedder.retrieval.store import CollectionInfo, Document, open_store

    store = open_store(str(data / "store"))
    info = CollectionInfo(name="kb", task="qa", encoder=embedder.fingerprint, dim=embedder.dim, index=index)
    collection = store.create_collection(info)
    rng = np.random.default_rng(seed)
    for start in range(0, keys, 10_000):
        n = min(10_000, keys - start)
        vectors = rng.standard_normal((n, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        docs = [
            Document(id=str(start + i), text=passages[(start + i) % len(passages)]["text"], title="") for i in range(n)
        ]
        collection.upsert(docs, vectors, encoder=embedder.fingerprint)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the searched collection")
    parser.add_argument("--backend", default="onnx", choices=["torch", "onnx", "onnx-int8"], help="encoder runtime")
    parser.add_argument("--requests", type=int, default=640, help="requests per load point")
    parser.add_argument(
        "--index",
        default="flat",
        help="index of the searched collection: flat (exact), hnsw, ivf (built on first search)",
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--work-dir", default=None, help="where the temporary store and server logs go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from llm_embedder import LLMEmbedder

    passages = [json.loads(line) for line in open(DATA / "tasks" / "qa" / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line)["query"] for line in open(DATA / "tasks" / "qa" / "dev.jsonl", encoding="utf-8")]
    embedder = LLMEmbedder(device="cpu", backend=args.backend)
    results: dict[str, Any] = {"keys": args.keys, "backend": args.backend, "index": args.index,
                               "omp_threads": os.environ["OMP_NUM_THREADS"]}  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        fill_store(data, embedder, args.keys, passages, args.index)
        print(f"store filled with {args.keys} keys in {time.perf_counter() - t0:.0f} s", flush=True)
        batched = Server(data, args.backend)
        single = Server(data, args.backend, "--max-batch", "1")
        try:

            def search(client: int, i: int) -> tuple[str, str, dict[str, Any]]:
                return (
                    "POST",
                    "/v1/collections/kb/search",
                    {"query": queries[(client * 31 + i) % len(queries)], "top_k": 10},
                )

            for server in (batched, single):  # warm-up: faiss cache of the collection, ONNX session
                run_load(server.url, 4, 16, search)

            # 1. micro-batching vs one-request-one-encode at 64 clients, alternated
            rounds: dict[str, list[dict[str, Any]]] = {"batched": [], "single": []}
            for _ in range(2):
                rounds["batched"].append(run_load(batched.url, 64, args.requests, search))
                rounds["single"].append(run_load(single.url, 64, args.requests, search))
            results["micro_batching"] = rounds
            b_rps = np.mean([r["rps"] for r in rounds["batched"]])
            s_rps = np.mean([r["rps"] for r in rounds["single"]])
            b_p99 = np.mean([r["p99"] for r in rounds["batched"]])
            s_p99 = np.mean([r["p99"] for r in rounds["single"]])
            print(f"micro-batching at 64 clients: {b_rps:.1f} vs {s_rps:.1f} req/s = {b_rps / s_rps:.2f}x; "
                  f"p99 {b_p99:.0f} vs {s_p99:.0f} ms", flush=True)  # fmt: skip
            single.stop()

            # 2. server overhead over an in-process encode of the same text (one client, alternated blocks)
            server_s: list[float] = []
            local_s: list[float] = []
            with httpx.Client(base_url=batched.url, timeout=60) as http:
                for block in range(8):
                    texts = queries[block * 25 : (block + 1) * 25]
                    for text in texts:
                        start = time.perf_counter()
                        http.post("/v1/embeddings", json={"input": text, "task": "qa"}).raise_for_status()
                        server_s.append(time.perf_counter() - start)
                    for text in texts:
                        start = time.perf_counter()
                        embedder.encode_queries([text], task="qa")
                        local_s.append(time.perf_counter() - start)
            overhead = float(np.median(server_s) / np.median(local_s) - 1)
            results["overhead"] = {"server": percentiles(server_s), "in_process": percentiles(local_s),
                                   "median_overhead": overhead}  # fmt: skip
            print(f"server overhead (median, one query): {np.median(server_s) * 1000:.1f} ms vs "
                  f"{np.median(local_s) * 1000:.1f} ms in-process = {overhead:+.0%}", flush=True)  # fmt: skip

            # 3. latency at 1 / 8 / 64 clients
            def memory_add(client: int, i: int) -> tuple[str, str, dict[str, Any]]:
                turns = [{"role": "user", "content": f"{queries[i % len(queries)]}"},
                         {"role": "assistant", "content": passages[i % len(passages)]["text"][:200]}]  # fmt: skip
                return "POST", f"/v1/conversations/load{client}/turns", {"turns": turns}

            def augment(client: int, i: int) -> tuple[str, str, dict[str, Any]]:
                body = {"query": queries[(client * 17 + i) % len(queries)], "conversation_id": f"load{client}",
                        "sources": [{"collection": "kb", "top_k": 3}, {"memory": "conversation", "top_k": 1}]}  # fmt: skip
                return "POST", "/v1/augment", body

            results["latency"] = {}
            for name, make in (("search", search), ("memory_add", memory_add), ("augment", augment)):
                for clients in (1, 8, 64):
                    total = args.requests // 4 if clients == 1 else args.requests
                    figures = run_load(batched.url, clients, total, make)
                    results["latency"].setdefault(name, []).append(figures)
                    print(f"{name:10s} {clients:3d} clients: p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} "
                          f"ms, p99 {figures['p99']:.1f} ms, {figures['rps']:.1f} req/s, errors {figures['errors']}",
                          flush=True)  # fmt: skip

            # 4. bulk ingest, 64 passages per request, vs encode_keys in-process
            httpx.post(f"{batched.url}/v1/collections", json={"name": "ingest", "task": "qa"}).raise_for_status()
            docs = [{"id": str(i), "title": p["title"], "text": p["text"]} for i, p in enumerate(passages[:1024])]
            batches = [docs[i : i + 64] for i in range(0, len(docs), 64)]
            start = time.perf_counter()
            run_load(batched.url, 2, len(batches), lambda c, i: ("POST", "/v1/collections/ingest/documents",
                                                                 {"documents": batches[c * (len(batches) // 2) + i]}))  # fmt: skip
            served = len(docs) / (time.perf_counter() - start)
            start = time.perf_counter()
            embedder.encode_keys([f"{d['title']} {d['text']}" for d in docs], task="qa", batch_size=64,
                                 show_progress_bar=False)  # fmt: skip
            local = len(docs) / (time.perf_counter() - start)
            results["ingest"] = {"served_passages_per_s": served, "in_process_encode_per_s": local}
            print(f"bulk ingest: {served:.0f} passages/s through the server (encode + store) vs {local:.0f}/s "
                  f"encode_keys in-process = {served / local:.2f}x", flush=True)  # fmt: skip
        finally:
            for log in sorted(Path(tmp).glob("server-*.log")):
                errors = [line for line in log.read_text(errors="replace").splitlines() if "Error" in line]
                if errors:
                    print(f"{log.name}: {len(errors)} error lines, last: {errors[-1]}", flush=True)
            for server in (batched, single):
                if server.process.poll() is None:
                    server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    random.seed(0)
    main()
