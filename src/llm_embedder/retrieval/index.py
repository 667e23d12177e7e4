"""A persistent dense index on faiss (the ``dense`` part of an index folder, see :mod:`llm_embedder.retrieval.folder`).

Index types (``index_type``): ``flat`` (exact search, the default), ``hnsw`` (graph, fast, approximate, no
training), ``ivfpq`` (inverted lists + product quantisation: small and fast for very large corpora, needs
training on >= 10k vectors), or any faiss ``index_factory`` string as an escape hatch (e.g. ``"IVF4096,Flat"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.retrieval.folder import atomic_folder, read_manifest, write_manifest

DENSE_FILE = "dense.faiss"
IDS_FILE = "ids.npy"
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
#: vectors added to faiss per call (keeps peak memory flat and the progress bar moving)
ADD_CHUNK = 65536


@dataclass
class IndexParams:
    """How the faiss index is built and searched. ``index_type``: flat | hnsw | ivfpq | a faiss factory string."""

    index_type: str = "flat"
    #: HNSW: graph degree, build-time and search-time beam widths
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 64
    #: IVF-PQ: number of inverted lists (default ~4*sqrt(n)), PQ sub-quantisers (default dim/8), lists probed
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int = 16
    #: IVF-PQ: re-rank the best ``rerank * k`` PQ candidates with the exact vectors (0 = off). The exact vectors
    #: are kept in the index file and memory-mapped, so RAM holds only the PQ codes while recall returns to ~1
    #: (benchmarks/README.md); the file is then as large as a flat index
    rerank: int = 0
    #: vectors used to train IVF-PQ (default: 50 per list, at least 10k, at most 256k)
    train_size: int | None = None
    seed: int = 0
    #: faiss metric: "ip" (inner product), "l2" (on unit vectors, scores reported as inner products), or "auto":
    #: l2 for ivfpq - faiss' PQ codes rank unit vectors far better under L2 than under inner product (measured:
    #: 1-recall@10 0.36 vs 1.0 on clustered 32-d data), and on unit vectors both metrics give the same order
    metric: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_metric(self) -> str:
        if self.metric not in ("auto", "ip", "l2"):
            raise UserError(f"unknown metric {self.metric!r}", hint="choose auto, ip or l2")
        if self.metric != "auto":
            return self.metric
        return "l2" if self.index_type == "ivfpq" else "ip"

    def factory(self, dim: int, n: int) -> str:
        """The faiss ``index_factory`` string for ``dim``-dimensional vectors, ``n`` of them known at build time."""
        kind = self.index_type
        if kind == "flat":
            return "Flat"
        if kind == "hnsw":
            return f"HNSW{int(self.hnsw_m)},Flat"
        if kind == "ivfpq":
            nlist = self.nlist or int(min(max(1, round(4 * math.sqrt(max(n, 1)))), max(1, n // 39)))
            pq_m = self.pq_m or _default_pq_m(dim)
            if dim % pq_m:
                raise UserError(f"--pq-m {pq_m} must divide the vector dimension {dim}")
            # "np": no polysemous training - it only serves Hamming pre-filtering, which we never use, and
            # takes ~10x longer than training the quantiser itself
            return f"IVF{nlist},PQ{pq_m}x8np" + (",RFlat" if self.rerank > 0 else "")
        return kind  # a faiss factory string (escape hatch)

    def training_size(self, nlist: int) -> int:
        return int(self.train_size or min(max(50 * nlist, 10_000), 262_144))


def _default_pq_m(dim: int) -> int:
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def _faiss() -> Any:
    import faiss

    return faiss


def _mmap_flag(faiss: Any, factory: str) -> int:
    # Measured with faiss 1.15: flat codes (Flat, HNSW storage, the exact vectors of RFlat re-ranking) are mapped
    # with IO_FLAG_MMAP_IFC, inverted lists (IVF*) with IO_FLAG_MMAP; the two flags cannot be combined, so an
    # IVF-PQ index with re-ranking maps its (large) exact vectors and reads its (small) PQ codes into memory.
    if "RFLAT" in factory.upper():
        return faiss.IO_FLAG_MMAP_IFC
    return faiss.IO_FLAG_MMAP if "IVF" in factory.upper() else faiss.IO_FLAG_MMAP_IFC


class DenseIndex:
    """Vectors in a faiss index (inner product) plus the corpus row of each vector.

    Build with :meth:`build`, grow with :meth:`add`, query with :meth:`search`, persist with :meth:`save` /
    :meth:`load` (memory-mapped by default, so a large index opens instantly and pages in on demand).
    """

    def __init__(
        self,
        index: Any,
        ids: np.ndarray | None = None,
        *,
        params: IndexParams | None = None,
        factory: str = "Flat",
        path: str | None = None,
        mmapped: bool = False,
    ) -> None:
        self.index = index
        self.ids = np.arange(index.ntotal, dtype=np.int64) if ids is None else ids
        if len(self.ids) != index.ntotal:
            raise UserError(f"index holds {index.ntotal} vectors but {len(self.ids)} ids were given")
        self.params = params or IndexParams()
        if self.params.metric == "auto":
            self.params.metric = "l2" if index.metric_type == _faiss().METRIC_L2 else "ip"
        self.factory = factory
        self._path = path
        self._mmapped = mmapped
        self._apply_search_params()

    # -------------------------------------------------------------- properties
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def index_type(self) -> str:
        return self.params.index_type

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"DenseIndex({self.factory!r}, ntotal={self.ntotal}, dim={self.dim}, mmapped={self._mmapped})"

    # -------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        vectors: np.ndarray | Sequence[np.ndarray],
        *,
        ids: np.ndarray | Sequence[int] | None = None,
        index_type: str = "flat",
        params: IndexParams | None = None,
        show_progress: bool | None = None,
    ) -> DenseIndex:
        """Build an index over ``vectors`` (one matrix, or a sequence of matrices such as memory-mapped shards)."""
        faiss = _faiss()
        params = replace(params) if params is not None else IndexParams(index_type=index_type)
        parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
        parts = [p for p in parts if p.shape[0] > 0] or parts[:1]
        if not parts or parts[0].ndim != 2:
            raise UserError("vectors must be a 2-D matrix (n, dim) or a sequence of such matrices")
        dim = int(parts[0].shape[1])
        n = sum(int(p.shape[0]) for p in parts)
        factory = params.factory(dim, n)
        if params.index_type == "ivfpq" and n < 10_000:
            raise UserError(
                f"index type ivfpq needs at least 10,000 vectors to train its quantiser (got {n})",
                hint="use --index-type flat (exact) or hnsw for a corpus this small",
            )
        metric = params.resolved_metric()
        params.metric = metric
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
        except RuntimeError:
            raise UserError(
                f"unknown index type {factory!r}",
                hint=f"choose {', '.join(INDEX_TYPES)} or a faiss index_factory string such as 'IVF1024,Flat'",
            ) from None
        if "HNSW" in factory:
            faiss.ParameterSpace().set_index_parameter(index, "efConstruction", int(params.ef_construction))
        if not index.is_trained:
            nlist = int(getattr(faiss.extract_index_ivf(index), "nlist", 1)) if "IVF" in factory else 1
            sample = _training_sample(parts, params.training_size(nlist), params.seed)
            if metric == "l2":
                _check_unit(sample)
            index.train(sample)
        out = cls(index, np.zeros(0, dtype=np.int64), params=params, factory=factory)
        out.add(parts, ids=ids, show_progress=show_progress)
        return out

    def add(
        self,
        vectors: np.ndarray | Sequence[np.ndarray],
        *,
        ids: np.ndarray | Sequence[int] | None = None,
        show_progress: bool | None = None,
    ) -> None:
        """Append vectors; ``ids`` default to the rows after the largest id held (appended corpus rows)."""
        parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
        n = sum(int(p.shape[0]) for p in parts)
        if n == 0:
            return
        for p in parts:
            if p.ndim != 2 or p.shape[1] != self.dim:
                raise UserError(f"vectors of dimension {p.shape[-1]} cannot go into an index of dimension {self.dim}")
        if ids is None:
            start = int(self.ids.max()) + 1 if len(self.ids) else 0
            new_ids = np.arange(start, start + n, dtype=np.int64)
        else:
            new_ids = np.asarray(ids, dtype=np.int64)
            if new_ids.shape != (n,):
                raise UserError(f"{len(new_ids)} ids given for {n} vectors")
        self._ensure_writable()
        if show_progress is None:
            show_progress = n >= 4 * ADD_CHUNK
        from tqdm.auto import tqdm

        with tqdm(total=n, desc="indexing", unit="vec", disable=not show_progress) as bar:
            for p in parts:
                for lo in range(0, p.shape[0], ADD_CHUNK):
                    chunk = np.ascontiguousarray(p[lo : lo + ADD_CHUNK], dtype=np.float32)
                    if self.params.metric == "l2":
                        _check_unit(chunk)
                    self.index.add(chunk)
                    bar.update(chunk.shape[0])
        self.ids = np.concatenate([np.asarray(self.ids, dtype=np.int64), new_ids])

    def _ensure_writable(self) -> None:
        # faiss aborts the whole process when a memory-mapped index is modified, so reload it into memory first.
        if self._mmapped and self._path is not None:
            self.index = _faiss().read_index(str(Path(self._path) / DENSE_FILE))
            self._mmapped = False
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        faiss = _faiss()
        space = faiss.ParameterSpace()
        if "HNSW" in self.factory:
            space.set_index_parameter(self.index, "efSearch", int(self.params.ef_search))
        if "IVF" in self.factory:
            space.set_index_parameter(self.index, "nprobe", int(self.params.nprobe))
        if "RFlat" in self.factory and self.params.rerank > 0:
            space.set_index_parameter(self.index, "k_factor_rf", int(self.params.rerank))

    def set_search_params(
        self, *, ef_search: int | None = None, nprobe: int | None = None, rerank: int | None = None
    ) -> None:
        """Trade speed for recall at query time (HNSW ``ef_search``, IVF ``nprobe``, IVF-PQ ``rerank`` factor)."""
        if ef_search is not None:
            self.params.ef_search = int(ef_search)
        if nprobe is not None:
            self.params.nprobe = int(nprobe)
        if rerank is not None:
            if "RFlat" not in self.factory:
                raise UserError("this index keeps no exact vectors to re-rank with", hint="build it with --rerank F")
            self.params.rerank = int(rerank)
        self._apply_search_params()

    # -------------------------------------------------------------- searching
    def search(self, queries: np.ndarray, k: int = 10) -> SearchResult:
        """Top-k corpus rows per query vector by inner product; hits of equal score are ordered by row."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise UserError(
                f"query vectors have dimension {queries.shape[1]} but the index has {self.dim}",
                hint="search with the encoder that built the index",
            )
        k = int(k)
        if k <= 0:
            raise UserError(f"k must be positive, got {k}")
        n = queries.shape[0]
        if self.ntotal == 0 or n == 0:
            return SearchResult(np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32))
        scores, positions = self.index.search(queries, min(k, self.ntotal))
        if self.params.metric == "l2":
            # |q - x|^2 = |q|^2 + 1 - 2 q.x for unit keys x: report the inner product, as for the other types
            scores = (np.sum(queries * queries, axis=1, keepdims=True) + 1.0 - scores) / 2.0
        valid = positions >= 0
        rows = np.where(valid, np.asarray(self.ids)[np.where(valid, positions, 0)], -1)
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        # deterministic order among equal scores: by corpus row (padding last)
        order = np.lexsort((np.where(valid, rows, np.iinfo(np.int64).max), -scores), axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return SearchResult(ids=rows.astype(np.int64), scores=scores.astype(np.float32))

    def reconstruct(self, position: int) -> np.ndarray:
        """The stored vector at faiss position ``position`` (exact for flat/HNSW, decoded for PQ)."""
        return np.asarray(self.index.reconstruct(int(position)), dtype=np.float32)

    # -------------------------------------------------------------- persistence
    def manifest_section(self) -> dict[str, Any]:
        return {
            "file": DENSE_FILE,
            "ids": IDS_FILE,
            "ntotal": self.ntotal,
            "dim": self.dim,
            "metric": self.params.metric,
            "index_type": self.params.index_type,
            "factory": self.factory,
            "params": asdict(self.params),
        }

    def write_files(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Write ``dense.faiss`` and ``ids.npy`` into ``folder`` (no manifest); returns the manifest section."""
        folder = Path(folder)
        _faiss().write_index(self.index, str(folder / DENSE_FILE))
        np.save(folder / IDS_FILE, np.asarray(self.ids, dtype=np.int64))
        return self.manifest_section()

    def save(self, folder: str | os.PathLike[str], *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Atomically write the index folder (files first, manifest last, then one rename)."""
        with atomic_folder(folder) as tmp:
            section = self.write_files(tmp)
            manifest = write_manifest(tmp, {"count": self.ntotal, **(meta or {}), "dense": section})
        self._path = str(folder)
        self._mmapped = False
        return manifest

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = True, verify: bool = False) -> DenseIndex:
        """Open a saved index; ``mmap`` maps the vectors instead of reading them (falls back to reading)."""
        faiss = _faiss()
        folder = Path(folder)
        manifest = read_manifest(folder, verify=verify)
        section = manifest.get("dense")
        if not section:
            raise UserError(f"{folder} holds no dense index", hint="rebuild it without --index-type none, or use bm25")
        factory = str(section.get("factory", "Flat"))
        path = str(folder / section.get("file", DENSE_FILE))
        index = None
        mmapped = False
        if mmap:
            try:
                index = faiss.read_index(path, _mmap_flag(faiss, factory))
                mmapped = True
            except RuntimeError:
                index = None
        if index is None:
            try:
                index = faiss.read_index(path)
            except RuntimeError as exc:
                raise UserError(f"{path}: faiss cannot read the index ({str(exc).splitlines()[0][:160]})") from None
        ids = np.load(folder / section.get("ids", IDS_FILE), mmap_mode="r" if mmap else None)
        if index.ntotal != int(section.get("ntotal", -1)) or len(ids) != index.ntotal:
            raise UserError(
                f"{folder}: the index holds {index.ntotal} vectors and {len(ids)} ids, "
                f"the manifest says {section.get('ntotal')}",
                hint="rebuild the index",
            )
        raw = dict(section.get("params") or {})
        known = {f for f in IndexParams.__dataclass_fields__}
        params = IndexParams(**{k: v for k, v in raw.items() if k in known})
        return cls(index, ids, params=params, factory=factory, path=str(folder), mmapped=mmapped)


def _check_unit(vectors: np.ndarray) -> None:
    norms = np.linalg.norm(vectors, axis=1)
    if len(norms) and np.abs(norms - 1.0).max() > 1e-3:
        raise UserError(
            "this index type compares unit vectors by L2 distance, but the vectors are not L2-normalised",
            hint="normalise them (LLMEmbedder does) or pass IndexParams(metric='ip')",
        )


def _training_sample(parts: Sequence[np.ndarray], size: int, seed: int) -> np.ndarray:
    """A uniform random sample of rows across all parts (memory-mapped shards stay on disk)."""
    sizes = [int(p.shape[0]) for p in parts]
    total = sum(sizes)
    size = min(size, total)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=size, replace=False)) if size < total else np.arange(total)
    out = []
    start = 0
    for p, n in zip(parts, sizes, strict=True):
        local = chosen[(chosen >= start) & (chosen < start + n)] - start
        if len(local):
            out.append(np.asarray(p[local], dtype=np.float32))
        start += n
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
