"""Speed and recall of the dense index types (flat, HNSW, IVF-PQ) against exact search, side by side.

Data: synthetic clustered unit vectors (dimension 384 like MiniLM / bge-small embeddings); queries are fresh
points from the same clusters. Ground truth = exact inner-product search (the ``flat`` index). For each index
type and each search setting (HNSW ``ef_search``, IVF ``nprobe``) it reports build time, index size, queries per
second and recall@10 against the exact top 10, plus the speed ratio to exact search. By default faiss uses one
thread, so the numbers compare algorithms rather than how busy a shared machine is.

    .venv/bin/python benchmarks/search.py                      # 100k vectors, 1000 queries
    .venv/bin/python benchmarks/search.py --n 300000 --plot benchmarks/search.png
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_embedder.retrieval.index import DenseIndex, IndexParams  # noqa: E402


def clustered_unit_vectors(
    n: int, dim: int, clusters: int, spread: float, seed: int, latent_dim: int = 0, noise: float = 0.05
) -> np.ndarray:
    """Gaussian clusters, normalised. ``latent_dim > 0``: the clusters live in a random ``latent_dim``-dimensional
    subspace plus small isotropic noise - like real sentence embeddings, whose variance sits in few directions.
    ``latent_dim = 0``: isotropic noise in all ``dim`` directions (the hardest case for quantisation)."""
    rng = np.random.default_rng(seed)
    space = latent_dim or dim
    centers = rng.normal(size=(clusters, space)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, size=n)
    z = centers[labels] + spread * rng.normal(size=(n, space)).astype(np.float32) / np.sqrt(space)
    if latent_dim:
        basis = np.linalg.qr(rng.normal(size=(dim, latent_dim)))[0].astype(np.float32)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        z = z @ basis.T + noise * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def index_bytes(index: DenseIndex) -> int:
    import faiss

    buffer = faiss.serialize_index(index.index)
    return int(buffer.nbytes) if hasattr(buffer, "nbytes") else len(buffer)


def timed_search(index: DenseIndex, queries: np.ndarray, k: int, repeats: int = 2) -> tuple[np.ndarray, float]:
    best = float("inf")
    ids = None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = index.search(queries, k).ids
        best = min(best, time.perf_counter() - start)
    return ids, len(queries) / best


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise around cluster centres (relative)")
    parser.add_argument("--latent-dim", type=int, default=64, help="intrinsic dimension (0: isotropic, hardest)")
    parser.add_argument("--threads", type=int, default=1, help="faiss threads (default 1)")
    parser.add_argument("--ef-search", default="32,64,128,256", help="HNSW settings to sweep")
    parser.add_argument("--nprobe", default="8,16,32,64", help="IVF-PQ settings to sweep")
    parser.add_argument("--rerank", type=int, default=4, help="re-rank factor of the ivfpq-rerank variant")
    parser.add_argument("--types", default="flat,hnsw,ivfpq,ivfpq-rerank", help="index types to compare")
    parser.add_argument("--plot", default=None, help="write a recall-vs-speed PNG here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    data = clustered_unit_vectors(
        args.n + args.queries, args.dim, args.clusters, args.spread, args.seed, latent_dim=args.latent_dim
    )
    x, q = data[: args.n], data[args.n :]
    print(
        f"{args.n:,} x {args.dim} clustered unit vectors ({args.clusters} clusters, "
        f"{f'latent dim {args.latent_dim}' if args.latent_dim else 'isotropic'}), {args.queries} queries, "
        f"k={args.k}, faiss {faiss.__version__}, {args.threads} thread(s)",
        flush=True,
    )

    rows = []
    start = time.perf_counter()
    flat = DenseIndex.build(x, index_type="flat")
    flat_build = time.perf_counter() - start
    exact, flat_qps = timed_search(flat, q, args.k)
    rows.append(("flat (exact)", "-", flat_build, index_bytes(flat), flat_qps, 1.0))
    print(f"flat built in {flat_build:.1f}s", flush=True)

    ef = [int(v) for v in args.ef_search.split(",")]
    nprobe = [int(v) for v in args.nprobe.split(",")]
    variants = {
        "hnsw": (IndexParams("hnsw"), "ef_search", ef),
        "ivfpq": (IndexParams("ivfpq"), "nprobe", nprobe),
        "ivfpq-rerank": (IndexParams("ivfpq", rerank=args.rerank), "nprobe", nprobe),
    }
    for kind in [t for t in args.types.split(",") if t != "flat"]:
        params, setting, values = variants[kind]
        start = time.perf_counter()
        index = DenseIndex.build(x, params=params)
        build = time.perf_counter() - start
        size = index_bytes(index)
        print(f"{kind} ({index.factory}) built in {build:.1f}s", flush=True)
        for value in values:
            index.set_search_params(**{setting: value})
            found, qps = timed_search(index, q, args.k)
            label = f"{setting}={value}" + (f", rerank={params.rerank}" if params.rerank else "")
            rows.append((f"{kind} {index.factory}", label, build, size, qps, recall_at_k(found, exact)))

    out = io.StringIO()
    out.write(f"| index | search setting | build s | size MB | queries/s | speed vs exact | recall@{args.k} |\n")
    out.write("|---|---|---:|---:|---:|---:|---:|\n")
    for name, setting, build, size, qps, recall in rows:
        out.write(
            f"| {name} | {setting} | {build:.1f} | {size / 2**20:.1f} | {qps:,.0f} | {qps / flat_qps:.1f}x | "
            f"{recall:.3f} |\n"
        )
    print(out.getvalue(), end="")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for prefix, marker in (("flat", "s"), ("hnsw", "o"), ("ivfpq", "^"), ("ivfpq-rerank", "v")):
            rerank = prefix.endswith("rerank")
            pts = [(r[5], r[4]) for r in rows if r[0].startswith(prefix.split("-")[0]) and ("RFlat" in r[0]) == rerank]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=prefix)
        ax.set_xlabel(f"recall@{args.k} vs exact")
        ax.set_ylabel("queries / s (log)")
        ax.set_yscale("log")
        ax.set_title(f"{args.n:,} x {args.dim} vectors, {args.threads} thread(s)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
