"""A persistent dense index on faiss, and the on-disk format of index folders.

An index folder holds everything ``llm-embedder search`` needs to answer queries later::

    INDEX_DIR/
      manifest.json   written LAST: format, counts, encoder/task/key template, corpus fingerprint, file checksums
      dense.faiss     the faiss index (inner product on L2-normalised vectors = cosine)
      ids.npy         int64: faiss position -> corpus row
      offsets.npy     int64: corpus row -> byte offset of its line in the corpus file (random access to rows)
      bm25/           optional BM25 index (bm25s files)

Why the care: a corpus of millions of rows takes hours to encode, and a job killed while writing must never leave
a folder that loads as if it were complete. Folders are therefore written into a hidden temporary sibling and
renamed over the target only when every file and the manifest are on disk (:func:`atomic_folder`); a folder
without a manifest, or whose files do not match the manifest, is refused with one clear line.

Index types (``index_type``): ``flat`` (exact search, the default), ``hnsw`` (graph, fast, approximate, no
training), ``ivfpq`` (inverted lists + product quantisation: small and fast for very large corpora, needs
training on >= 10k vectors), or any faiss ``index_factory`` string as an escape hatch (e.g. ``"IVF4096,Flat"``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from llm_embedder.errors import DataError, UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.utils.files import atomic_write

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "llm-embedder-index"
DENSE_FILE = "dense.faiss"
IDS_FILE = "ids.npy"
OFFSETS_FILE = "offsets.npy"
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
#: vectors added to faiss per call (keeps peak memory flat and the progress bar moving)
ADD_CHUNK = 65536


# ---------------------------------------------------------------------------------------------------- top-k
def top_k_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first; ties broken by lower position (deterministic).

    ``np.argpartition`` alone leaves ties at the cut in arbitrary order, so every element tied with the k-th
    score is kept and the candidates are sorted on (-score, position).
    """
    scores = np.asarray(scores)
    n = scores.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    clean = np.where(np.isnan(scores), -np.inf, scores)
    if k < n:
        part = np.argpartition(-clean, k - 1)[:k]
        cand = np.flatnonzero(clean >= clean[part].min())
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -clean[cand]))
    return cand[order][:k].astype(np.int64)


def pad_result(rows: Sequence[Sequence[int]], scores: Sequence[Sequence[float]], k: int) -> SearchResult:
    """A :class:`SearchResult` from ragged per-query hits, padded with id -1 / score -inf."""
    n = len(rows)
    ids = np.full((n, k), -1, dtype=np.int64)
    out = np.full((n, k), -np.inf, dtype=np.float32)
    for i, (r, s) in enumerate(zip(rows, scores, strict=True)):
        m = min(len(r), k)
        ids[i, :m] = np.asarray(r[:m], dtype=np.int64)
        out[i, :m] = np.asarray(s[:m], dtype=np.float32)
    return SearchResult(ids=ids, scores=out)


# ---------------------------------------------------------------------------------------------------- folders
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def recover_folder(target: str | os.PathLike[str]) -> None:
    """Finish an interrupted swap and drop temporary folders of dead writers.

    Replacing an existing folder takes two renames (old away, new in); a kill between them leaves the previous
    complete version under ``.NAME.old-*``. It is moved back so the target always holds a complete version.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for tmp in _leftovers(target, "tmp"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    olds = _leftovers(target, "old")
    if not target.exists():
        for old in reversed(olds):
            pid = old.name.rsplit("-", 2)[-2]
            if (old / MANIFEST_NAME).is_file() and not (pid.isdigit() and _pid_alive(int(pid))):
                os.rename(old, target)
                olds.remove(old)
                break
    for old in olds:
        pid = old.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    On any error (or a kill) the target keeps its previous content: a killed build leaves either no folder or the
    previous complete one, never a half-written index.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{tag}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256_file(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as handle:
        while True:
            size = 1 << 20 if left is None else min(1 << 20, left)
            if size == 0:
                break
            chunk = handle.read(size)
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of ``folder`` into ``manifest["files"]`` and write ``manifest.json`` (call it last)."""
    folder = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(folder).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256_file(path)}
    manifest = {
        "kind": MANIFEST_KIND,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    with atomic_write(folder / MANIFEST_NAME) as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder / MANIFEST_NAME, 0o666 & ~umask)  # readable like the other index files (mkstemp made it 0600)
    return manifest


def read_manifest(folder: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Read and check an index folder's manifest: every listed file present with its size (and sha256 if ``verify``)."""
    folder = Path(folder)
    recover_folder(folder)
    if not folder.exists():
        raise UserError(f"index folder {folder} not found", hint="build one with `llm-embedder index`")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, expected an index folder")
    file = folder / MANIFEST_NAME
    if not file.is_file():
        raise UserError(
            f"{folder} is not a complete index (no {MANIFEST_NAME})",
            hint="the build was interrupted or this is not an index folder; rerun `llm-embedder index`",
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot parse the index manifest ({exc})", hint="rebuild the index") from None
    if manifest.get("kind") != MANIFEST_KIND:
        raise UserError(f"{file}: not an llm-embedder index manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{file}: index format {manifest.get('format_version')} is newer than this llm-embedder")
    for rel, info in (manifest.get("files") or {}).items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{folder}: index file {rel} is missing", hint="rebuild the index")
        if path.stat().st_size != info.get("bytes"):
            raise UserError(
                f"{folder}: index file {rel} has {path.stat().st_size} bytes, the manifest says {info.get('bytes')}",
                hint="the folder was modified after it was written; rebuild the index",
            )
        if verify and _sha256_file(path) != info.get("sha256"):
            raise UserError(f"{folder}: checksum of {rel} does not match the manifest", hint="rebuild the index")
    return manifest


# ---------------------------------------------------------------------------------------------------- corpus rows
@dataclass
class CorpusScan:
    """A corpus file's fingerprint and the byte offset of each row (row = non-blank line)."""

    path: str
    rows: int
    bytes: int
    sha256: str
    offsets: np.ndarray  # int64 (rows,)
    linenos: np.ndarray  # int64 (rows,), 1-based, for error messages

    def fingerprint(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


def _open_corpus(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def scan_corpus(path: str | os.PathLike[str]) -> CorpusScan:
    """One streaming pass over a JSON-lines corpus: row offsets plus a sha256 of the (uncompressed) bytes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found")
    digest = hashlib.sha256()
    offsets: list[int] = []
    linenos: list[int] = []
    position = 0
    with _open_corpus(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            digest.update(raw)
            if raw.strip() and raw.strip() != b"\xef\xbb\xbf":
                offsets.append(position)
                linenos.append(lineno)
            position += len(raw)
    if not offsets:
        raise DataError(str(path), None, "corpus is empty (no JSON rows)", hint="one JSON object per line")
    return CorpusScan(
        path=str(path.resolve()),
        rows=len(offsets),
        bytes=position,
        sha256=digest.hexdigest(),
        offsets=np.asarray(offsets, dtype=np.int64),
        linenos=np.asarray(linenos, dtype=np.int64),
    )


def corpus_prefix_sha256(path: str | os.PathLike[str], nbytes: int) -> str:
    """sha256 of the first ``nbytes`` (uncompressed) bytes: tells whether rows were only appended since."""
    path = Path(path)
    if path.suffix != ".gz":
        return _sha256_file(path, nbytes)
    digest = hashlib.sha256()
    left = nbytes
    with gzip.open(path, "rb") as handle:
        while left > 0:
            chunk = handle.read(min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _parse_row(raw: bytes, path: str, lineno: int | None) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(
            path, lineno, f"not valid UTF-8 (byte {exc.start})", hint="re-encode the file as UTF-8"
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_corpus_rows(scan: CorpusScan, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows ``start:stop`` of a scanned corpus (seeks to the first; reads sequentially)."""
    path = Path(scan.path)
    out: list[dict[str, Any]] = []
    if start >= stop:
        return out
    with _open_corpus(path) as handle:
        handle.seek(int(scan.offsets[start]))
        row = start
        while row < stop:
            raw = handle.readline()
            if not raw:
                raise DataError(scan.path, None, f"ended before row {row}", hint="the corpus changed during the build")
            if not raw.strip() or raw.strip() == b"\xef\xbb\xbf":
                continue
            out.append(_parse_row(raw, scan.path, int(scan.linenos[row])))
            row += 1
    return out


class CorpusRows:
    """Random access to the rows of a corpus file through saved byte offsets (no need to load the corpus)."""

    def __init__(self, path: str | os.PathLike[str], offsets: np.ndarray) -> None:
        self.path = Path(path)
        self.offsets = offsets
        if not self.path.is_file():
            raise UserError(
                f"corpus {self.path} (recorded in the index) not found", hint="pass --corpus with its new location"
            )

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def get(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The rows, in the order asked; read in file order (a .gz file can only seek forward cheaply)."""
        found: dict[int, dict[str, Any]] = {}
        with _open_corpus(self.path) as handle:
            for row in sorted({int(r) for r in rows}):
                if not 0 <= row < len(self):
                    raise UserError(f"corpus row {row} out of range (the index knows {len(self)} rows)")
                handle.seek(int(self.offsets[row]))
                found[row] = _parse_row(handle.readline(), f"{self.path} (row {row})", None)
        return [found[int(r)] for r in rows]


# ---------------------------------------------------------------------------------------------------- the index
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
        from llm_embedder.utils.progress import progress

        with progress(total=n, desc="indexing", unit="vec", disable=not show_progress) as bar:
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
