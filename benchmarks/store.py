"""Store search, upsert and delete speed: the embedded store (SQLite + faiss) and Milvus (a ``milvus-lite server`` on
127.0.0.1, over gRPC), exact search against each backend's approximate index, side by side in one run.

Data: synthetic clustered unit vectors of dimension 384 (the generator of ``benchmarks/search.py``: clusters in a
64-dimensional subspace plus isotropic noise, like sentence embeddings); queries are fresh points from the same
clusters. Ground truth = the exact top 10. Every figure goes through the store API (``Collection.search_many`` /
``search``), so it includes what a caller pays: scope check, document fetch, Python.

* latency: one query per call, p50 / p95 over ``--latency-queries`` calls;
* queries/s: all ``--queries`` queries in batches of ``--batch`` (one ``search_many`` call per batch);
* recall@10: against the exact top 10 of the same backend;
* upsert: documents/s for batches of 1,000 random vectors (encoder excluded) and for 256 short texts encoded by the
  bundled MiniLM then upserted (encoder included); delete: latency of deleting 10 ids, p50 / p95.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/store.py                 # 100k x 384, both backends
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/store.py --n 20000 --no-milvus   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search import clustered_unit_vectors  # noqa: E402

from llm_embedder.retrieval.store import CollectionInfo, Document, open_store  # noqa: E402

ENCODER = "bench|dim=384"


def recall_at_10(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def measure(collection, queries: np.ndarray, batch: int, latency_queries: int) -> dict:
    lat = []
    for q in queries[:latency_queries]:
        start = time.perf_counter()
        collection.search(vector=q, encoder=ENCODER, k=10)
        lat.append(time.perf_counter() - start)
    ids: list[list[str]] = []
    start = time.perf_counter()
    for lo in range(0, len(queries), batch):
        hits = collection.search_many(vectors=queries[lo : lo + batch], encoder=ENCODER, k=10)
        ids.extend([h.id for h in row] for row in hits)
    qps = len(queries) / (time.perf_counter() - start)
    return {
        "p50_ms": 1000 * float(np.median(lat)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
        "qps": qps,
        "ids": ids,
    }


def fill(collection, keys: np.ndarray) -> float:
    start = time.perf_counter()
    for lo in range(0, len(keys), 5000):
        docs = [Document(f"k{i}", f"key {i}") for i in range(lo, min(lo + 5000, len(keys)))]
        collection.upsert(docs, keys[lo : lo + 5000], encoder=ENCODER)
    return time.perf_counter() - start


def upsert_and_delete(collection, dim: int, embedder, deletes: int = 50) -> dict:
    rng = np.random.default_rng(7)
    v = rng.normal(size=(10_000, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    start = time.perf_counter()
    for lo in range(0, 10_000, 1000):
        collection.upsert(
            [Document(f"u{i}", f"upserted {i}") for i in range(lo, lo + 1000)], v[lo : lo + 1000], encoder=ENCODER
        )
    upsert = 10_000 / (time.perf_counter() - start)
    out = {"upsert_docs_s": upsert}
    if embedder is not None:
        texts = [f"passage {i} about retrieval augmented language models and memory" for i in range(256)]
        start = time.perf_counter()
        vectors = embedder.encode_keys(texts, task="qa")
        collection.upsert([Document(f"e{i}", t) for i, t in enumerate(texts)], vectors, encoder=ENCODER)
        out["upsert_encoded_docs_s"] = len(texts) / (time.perf_counter() - start)
    lat = []
    for j in range(deletes):
        start = time.perf_counter()
        collection.delete(ids=[f"u{j * 10 + i}" for i in range(10)])
        lat.append(time.perf_counter() - start)
    out["delete_p50_ms"] = 1000 * float(np.median(lat))
    out["delete_p95_ms"] = 1000 * float(np.percentile(lat, 95))
    return out


def start_milvus(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or "milvus-lite"
    proc = subprocess.Popen(
        [exe, "server", "--data-dir", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"milvus://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("milvus-lite did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--milvus-queries", type=int, default=200, help="queries for Milvus' queries/s and recall")
    parser.add_argument(
        "--milvus-latency-queries", type=int, default=20, help="single-query calls on Milvus (milvus-lite is slow)"
    )
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--nprobe", default="4,8,16", help="embedded IVF settings to sweep")
    parser.add_argument("--ef-search", default="16,32,64", help="HNSW settings to sweep (embedded and Milvus)")
    parser.add_argument("--no-hnsw", action="store_true", help="skip the embedded HNSW build (minutes at 100k)")
    parser.add_argument("--no-milvus", action="store_true")
    parser.add_argument("--no-encoder", action="store_true", help="skip the encoder-included upsert figure")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    data = clustered_unit_vectors(args.n + args.queries, args.dim, args.clusters, 1.0, seed=0, latent_dim=64)
    keys, queries = data[: args.n], data[args.n :]
    embedder = None
    if not args.no_encoder:
        from llm_embedder import LLMEmbedder

        embedder = LLMEmbedder(device="cpu")
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    print(
        f"{args.n} keys x {args.dim}, {args.queries} queries, batch {args.batch}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}",
        flush=True,
    )

    def report(backend: str, setting: str, m: dict, truth: list[list[str]], exact_qps: float, build: float) -> None:
        row = {
            "backend": backend,
            "setting": setting,
            "build_s": round(build, 1),
            "p50_ms": round(m["p50_ms"], 2),
            "p95_ms": round(m["p95_ms"], 2),
            "qps": round(m["qps"], 1),
            "x_exact": round(m["qps"] / exact_qps, 2),
            "recall@10": round(recall_at_10(m["ids"], truth), 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    # ------------------------------------------------------------------ embedded
    store = open_store(tmp / "embedded")
    exact = store.create_collection(CollectionInfo("exact", "qa", ENCODER, args.dim))
    fill_s = fill(exact, keys)
    exact.search(vector=queries[0], encoder=ENCODER)  # builds the faiss cache
    m = measure(exact, queries, args.batch, args.latency_queries)
    truth = m["ids"]
    exact_qps = m["qps"]
    report("embedded", "flat (exact)", m, truth, exact_qps, fill_s)
    ivf = store.create_collection(CollectionInfo("ivf", "qa", ENCODER, args.dim, index="ivf"))
    fill(ivf, keys)
    start = time.perf_counter()
    ivf.search(vector=queries[0], encoder=ENCODER)
    build = time.perf_counter() - start
    for nprobe in [int(x) for x in args.nprobe.split(",")]:
        ivf.tune(nprobe=nprobe)
        report(
            "embedded",
            f"ivf nprobe={nprobe}",
            measure(ivf, queries, args.batch, args.latency_queries),
            truth,
            exact_qps,
            build,
        )
    if not args.no_hnsw:
        hnsw = store.create_collection(CollectionInfo("hnsw", "qa", ENCODER, args.dim, index="hnsw"))
        fill(hnsw, keys)
        start = time.perf_counter()
        hnsw.search(vector=queries[0], encoder=ENCODER)
        build = time.perf_counter() - start
        for ef in [int(x) for x in args.ef_search.split(",")]:
            hnsw.tune(ef_search=ef)
            report(
                "embedded",
                f"hnsw ef_search={ef}",
                measure(hnsw, queries, args.batch, args.latency_queries),
                truth,
                exact_qps,
                build,
            )
    writes = upsert_and_delete(exact, args.dim, embedder)
    writes["backend"] = "embedded"
    print(json.dumps(writes), flush=True)
    results = {"search": rows, "writes": [writes]}
    store.close()

    # ------------------------------------------------------------------ Milvus
    if not args.no_milvus:
        proc, uri = start_milvus(tmp / "milvus")
        try:
            store = open_store(uri)
            exact = store.create_collection(CollectionInfo("exact", "qa", ENCODER, args.dim))
            fill_s = fill(exact, keys)
            mq = queries[: args.milvus_queries]
            m = measure(exact, mq, args.batch, args.milvus_latency_queries)
            mtruth, mqps = m["ids"], m["qps"]
            report("milvus", "FLAT (exact)", m, mtruth, mqps, fill_s)
            same = recall_at_10(mtruth, truth[: args.milvus_queries])
            print(f"milvus exact vs embedded exact: {mqps / exact_qps:.2f}x queries/s, top-10 overlap {same:.4f}")
            results["milvus_exact_vs_embedded"] = {"qps_ratio": mqps / exact_qps, "top10_overlap": same}
            hnsw = store.create_collection(CollectionInfo("hnsw", "qa", ENCODER, args.dim, index="hnsw"))
            fill_s = fill(hnsw, keys)
            for ef in [int(x) for x in args.ef_search.split(",")]:
                hnsw.tune(ef_search=ef)  # type: ignore[attr-defined]
                report(
                    "milvus",
                    f"HNSW ef={ef}",
                    measure(hnsw, mq, args.batch, args.milvus_latency_queries),
                    mtruth,
                    mqps,
                    fill_s,
                )
            writes = upsert_and_delete(exact, args.dim, embedder, deletes=10)
            writes["backend"] = "milvus"
            print(json.dumps(writes), flush=True)
            results["writes"].append(writes)
            store.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n| backend | setting | build s | p50 ms | p95 ms | queries/s | x exact (same backend) | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['setting']} | {r['build_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['qps']:,.0f} | "
            f"{r['x_exact']}x | {r['recall@10']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
