"""``llm-embedder serve`` under load, against real server processes (uvicorn), from concurrent HTTP clients.

What is measured (from this process, N concurrent keep-alive connections each sending requests back to back through
a minimal asyncio HTTP/1.1 client, :class:`Connection`; the encoder runtime is ``--backend``, by default
``onnx-int8``, what ``llm-embedder serve`` uses on a CPU):

1. micro-batching vs one-request-one-encode: two servers on the same data, one started with ``--max-batch 64`` (the
   default: concurrent requests share encoder calls) and one with ``--max-batch 1`` (each request its own encoder
   call and store search, what a plain "encode in the handler" server does); search at 64 clients, after one
   unmeasured round at 64 clients on each server, rounds alternated A B A B ... (``--rounds`` of each). Besides
   requests/s and p99: the server's CPU time per request (from /proc, steadier than wall time on a shared
   machine) and the requests per encoder call (from /metrics);
2. server overhead over calling the encoder in-process for the same texts (``LLMEmbedder.encode`` in this process,
   what a user would do without a server), three ways: (a) one short query, one client, ``POST /v1/embeddings`` vs
   ``encode_queries([text])``, median, blocks alternated; (b) a realistic batch, 32 passages per
   ``/v1/embeddings`` call vs ``encode_keys`` of the same 32, median; (c) throughput: the queries sent as single-text
   requests by 64 clients vs the same queries encoded in-process one call per query, and in one call for all;
3. search, memory add and augment (knowledge top 3 + memory top 1, no LM) p50 / p95 / p99 at 1 / 8 / 64 clients,
   with ``--keys`` random unit vectors (texts from the qa corpus, cycled) in the searched collection, written
   straight through the store before the server starts;
4. bulk ingest: ``POST /v1/collections/{name}/documents`` with 64 real passages per request (2 clients) - encoded
   and durably written - vs ``encode_keys`` of the same passages in this process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py --keys 100000 --requests 320 --index ivf --json serve.json

The server processes get ``OMP_NUM_THREADS`` from the environment (ONNX Runtime uses every core the process may run
on either way); the in-process encoder runs with ``LLM_EMBEDDER_ORT_SPIN=0`` as the servers do. On a shared machine
the absolute figures are under contention, the side-by-side ratios less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
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
            "warning",
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


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the load generator's client.

    Why not ``httpx.AsyncClient``: it spent ~4.6 ms of CPU per request here (measured with 64 clients), as much as
    the server itself, on the same 2 cores - the benchmark then measured its own client. Tools such as wrk or oha
    are what one would use instead; this is the same idea in a few lines of Python (fixed-length JSON bodies only,
    which is all the server's load routes answer with).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        try:
            header = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            await self.close()
            raise ConnectionError("the server closed the connection") from None
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        if "content-length" not in fields:
            raise RuntimeError(f"{method} {path}: answer without Content-Length ({fields})")
        content = await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load(url: str, clients: int, per_client: int, make_request: Any) -> dict[str, Any]:
    """``clients`` concurrent loops of ``per_client`` requests; ``make_request(client, i) -> (method, path, body)``."""
    latencies: list[float] = []
    errors: dict[Any, int] = {}
    host, port = url.split("//")[1].split(":")

    async def one(client: int) -> None:
        connection = Connection(host, int(port))
        for i in range(per_client):
            method, path, body = make_request(client, i)
            start = time.perf_counter()
            try:
                status, _ = await connection.request(method, path, body)
            except (OSError, ConnectionError) as exc:  # counted, not fatal: a busy machine drops connections
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await connection.close()
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
        await connection.close()

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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encoder_calls(url: str) -> tuple[float, float]:
    """(encoder calls, requests they served) so far, from the server's /metrics."""
    calls = served = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("llm_embedder_encoder_batch_requests_count"):
            calls += float(line.split()[-1])
        elif line.startswith("llm_embedder_encoder_batch_requests_sum"):
            served += float(line.split()[-1])
    return calls, served


def measured_load(server: Server, clients: int, total: int, make_request: Any) -> dict[str, Any]:
    """:func:`run_load` plus the server's CPU milliseconds per request and requests per encoder call."""
    calls0, served0 = encoder_calls(server.url)
    cpu0 = process_cpu_seconds(server.process.pid)
    figures = run_load(server.url, clients, total, make_request)
    cpu = process_cpu_seconds(server.process.pid) - cpu0
    calls, served = encoder_calls(server.url)
    figures["server_cpu_ms_per_request"] = 1000 * cpu / max(1, figures["requests"])
    figures["requests_per_encoder_call"] = (served - served0) / max(1.0, calls - calls0)
    return figures


def median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1000)


async def timed_requests(url: str, requests: list[tuple[str, str, Any]]) -> list[float]:
    """Each request in turn on one connection; the seconds of each."""
    host, port = url.split("//")[1].split(":")
    connection = Connection(host, int(port))
    out = []
    for method, path, body in requests:
        start = time.perf_counter()
        status, content = await connection.request(method, path, body)
        out.append(time.perf_counter() - start)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {content[:200]!r}")
    await connection.close()
    return out


def overhead(server: Server, embedder: Any, queries: list[str], passages: list[dict[str, str]]) -> dict[str, Any]:
    """Section 2 of the module docstring: the server against the in-process encoder on the same texts."""
    out: dict[str, Any] = {}
    # (a) one short query per call, one client, blocks alternated
    served: list[float] = []
    local: list[float] = []
    for block in range(8):
        texts = queries[block * 25 : (block + 1) * 25]
        served += asyncio.run(
            timed_requests(server.url, [("POST", "/v1/embeddings", {"input": t, "task": "qa"}) for t in texts])
        )
        for text in texts:
            start = time.perf_counter()
            embedder.encode_queries([text], task="qa")
            local.append(time.perf_counter() - start)
    out["one_query"] = {"server_ms": median_ms(served), "in_process_ms": median_ms(local),
                        "overhead": median_ms(served) / median_ms(local) - 1}  # fmt: skip
    # (b) 32 passages per call
    keys = [f"{p['title']} {p['text']}" for p in passages]
    served, local = [], []
    for block in range(6):
        batch = keys[block * 32 : (block + 1) * 32]
        body = {"input": batch, "task": "qa", "input_type": "passage"}
        served += asyncio.run(timed_requests(server.url, [("POST", "/v1/embeddings", body)]))
        start = time.perf_counter()
        embedder.encode_keys(batch, task="qa", show_progress_bar=False)
        local.append(time.perf_counter() - start)
    out["passages_32"] = {"server_ms": median_ms(served), "in_process_ms": median_ms(local),
                          "overhead": median_ms(served) / median_ms(local) - 1}  # fmt: skip
    # (c) throughput: single-query requests from 64 clients vs in-process, per query and all at once
    texts = queries[:320]
    figures = run_load(server.url, 64, len(texts), lambda c, i: ("POST", "/v1/embeddings",
                                                                 {"input": texts[c * 5 + i], "task": "qa"}))  # fmt: skip
    start = time.perf_counter()
    for text in texts:
        embedder.encode_queries([text], task="qa")
    one_by_one = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    embedder.encode_queries(texts, task="qa", batch_size=64, show_progress_bar=False)
    all_at_once = len(texts) / (time.perf_counter() - start)
    out["throughput_64_clients"] = {"server_rps": figures["rps"], "in_process_one_by_one_per_s": one_by_one,
                                    "in_process_one_call_per_s": all_at_once, "errors": figures["errors"]}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the searched collection")
    parser.add_argument(
        "--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"], help="encoder runtime (both sides)"
    )
    parser.add_argument("--requests", type=int, default=640, help="requests per load point")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each server, alternated")
    parser.add_argument(
        "--index",
        default="flat",
        help="index of the searched collection: flat (exact), hnsw, ivf (built on first search)",
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--work-dir", default=None, help="where the temporary store and server logs go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # the in-process encoder runs as the server's does (serve turns ONNX Runtime's spin-waiting off), so the overhead
    # figures compare the same encoder with and without the server around it
    os.environ.setdefault("LLM_EMBEDDER_ORT_SPIN", "0")
    from llm_embedder import LLMEmbedder

    passages = [json.loads(line) for line in open(DATA / "tasks" / "qa" / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line)["query"] for line in open(DATA / "tasks" / "qa" / "dev.jsonl", encoding="utf-8")]
    embedder = LLMEmbedder(device="cpu", backend=args.backend)
    results: dict[str, Any] = {"keys": args.keys, "backend": args.backend, "index": args.index,
                               "omp_threads": os.environ["OMP_NUM_THREADS"],
                               "load_average_start": os.getloadavg()}  # fmt: skip
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        fill_store(data, embedder, args.keys, passages, args.index)
        print(f"store filled with {args.keys} keys in {time.perf_counter() - t0:.0f} s", flush=True)
        # one server per data folder (serve holds its folder): the one-request-one-encode server gets a copy
        shutil.copytree(data, Path(tmp) / "data-single")
        batched = Server(data, args.backend)
        single = Server(Path(tmp) / "data-single", args.backend, "--max-batch", "1")
        try:

            def search(client: int, i: int) -> tuple[str, str, dict[str, Any]]:
                return (
                    "POST",
                    "/v1/collections/kb/search",
                    {"query": queries[(client * 31 + i) % len(queries)], "top_k": 10},
                )

            # warm-up, not measured: faiss cache of the collection, ONNX session, and one full round at 64 clients
            # (the first round of batches of ~32 queries ran at half speed with a 400 ms p99 in every earlier run,
            # most likely ONNX Runtime planning and allocating for new input shapes; the one-query server has one)
            for server in (batched, single):
                run_load(server.url, 4, 16, search)
                run_load(server.url, 64, args.requests, search)

            # 1. micro-batching vs one-request-one-encode at 64 clients, alternated
            rounds: dict[str, list[dict[str, Any]]] = {"batched": [], "single": []}
            for _ in range(args.rounds):
                rounds["batched"].append(measured_load(batched, 64, args.requests, search))
                rounds["single"].append(measured_load(single, 64, args.requests, search))
            results["micro_batching"] = rounds
            mean = {side: {key: float(np.mean([r[key] for r in runs])) for key in runs[0] if key != "errors"}
                    for side, runs in rounds.items()}  # fmt: skip
            b, s = mean["batched"], mean["single"]
            print(f"rounds (req/s): batched {[round(r['rps']) for r in rounds['batched']]}, single "
                  f"{[round(r['rps']) for r in rounds['single']]}", flush=True)  # fmt: skip
            print(f"micro-batching at 64 clients: {b['rps']:.1f} vs {s['rps']:.1f} req/s = {b['rps'] / s['rps']:.2f}x; "
                  f"p99 {b['p99']:.0f} vs {s['p99']:.0f} ms; server CPU {b['server_cpu_ms_per_request']:.2f} vs "
                  f"{s['server_cpu_ms_per_request']:.2f} ms/request = "
                  f"{s['server_cpu_ms_per_request'] / b['server_cpu_ms_per_request']:.2f}x; "
                  f"{b['requests_per_encoder_call']:.1f} vs {s['requests_per_encoder_call']:.1f} requests per encoder "
                  f"call; errors {[r['errors'] for r in rounds['batched'] + rounds['single'] if r['errors']]}",
                  flush=True)  # fmt: skip
            single.stop()

            # 2. server overhead over the in-process encoder on the same texts
            results["overhead"] = found = overhead(batched, embedder, queries, passages)
            for name in ("one_query", "passages_32"):
                f = found[name]
                print(f"server overhead, {name} (median): {f['server_ms']:.1f} ms vs {f['in_process_ms']:.1f} ms "
                      f"in-process = {f['overhead']:+.0%}", flush=True)  # fmt: skip
            f = found["throughput_64_clients"]
            print(f"single-query requests at 64 clients: {f['server_rps']:.0f} req/s vs in-process "
                  f"{f['in_process_one_by_one_per_s']:.0f}/s one call per query "
                  f"({f['server_rps'] / f['in_process_one_by_one_per_s']:.2f}x), "
                  f"{f['in_process_one_call_per_s']:.0f}/s in one call "
                  f"({f['server_rps'] / f['in_process_one_call_per_s']:.2f}x); errors {f['errors']}", flush=True)  # fmt: skip

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
            figures = run_load(batched.url, 2, len(batches), lambda c, i: ("POST", "/v1/collections/ingest/documents",
                                                                           {"documents": batches[c * (len(batches) // 2) + i]}))  # fmt: skip
            served = len(docs) / (time.perf_counter() - start)
            count = httpx.get(f"{batched.url}/v1/collections").json()["collections"]
            stored = next(c["count"] for c in count if c["name"] == "ingest")
            start = time.perf_counter()
            embedder.encode_keys([f"{d['title']} {d['text']}" for d in docs], task="qa", batch_size=64,
                                 show_progress_bar=False)  # fmt: skip
            local = len(docs) / (time.perf_counter() - start)
            results["ingest"] = {"served_passages_per_s": served, "in_process_encode_per_s": local, "stored": stored,
                                 "errors": figures["errors"]}  # fmt: skip
            print(f"bulk ingest: {served:.0f} passages/s through the server (encode + durable store write, {stored} "
                  f"stored) vs {local:.0f}/s encode_keys in-process = {served / local:.2f}x; errors "
                  f"{figures['errors']}", flush=True)  # fmt: skip
        finally:
            for log in sorted(Path(tmp).glob("server-*.log")):
                errors = [line for line in log.read_text(errors="replace").splitlines() if "Error" in line]
                if errors:
                    print(f"{log.name}: {len(errors)} error lines, last: {errors[-1]}", flush=True)
            for server in (batched, single):
                if server.process.poll() is None:
                    server.stop()
    results["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    random.seed(0)
    main()
