"""Dense retrieval with the LLM-Embedder: keys encoded with the task's key instruction, queries with its query
instruction, nearest neighbours by inner product (cosine on normalised vectors) in a :class:`DenseIndex`.

Also here: :func:`build_index_folder`, the resumable, atomic build behind ``llm-embedder index``. Large corpora
take hours to encode, so embeddings are written in shards as they are finished (a killed run resumes from the
last finished shard) and the finished index folder appears in one rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llm_embedder.data.corpus import render_key
from llm_embedder.errors import DataError, UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.retrieval.corpus_file import (
    OFFSETS_FILE,
    CorpusScan,
    corpus_prefix_sha256,
    read_corpus_rows,
    scan_corpus,
)
from llm_embedder.retrieval.folder import atomic_folder, read_manifest, recover_folder, write_manifest
from llm_embedder.retrieval.index import DenseIndex, IndexParams
from llm_embedder.retrieval.ranking import top_k_desc
from llm_embedder.tasks.spec import TaskSpec
from llm_embedder.utils.files import atomic_write, exclusive_lock, write_json
from llm_embedder.utils.templates import template_fields

if TYPE_CHECKING:
    from llm_embedder.model.embedder import LLMEmbedder


class DenseRetriever:
    """Retrieve corpus rows for queries of ``task`` with an :class:`LLMEmbedder`.

    Give either ``keys`` (encoded now into an exact in-memory index) or a prebuilt ``index`` whose ids are corpus
    rows (e.g. :meth:`DenseIndex.load`, or :meth:`from_folder` for a folder made by ``llm-embedder index``).
    """

    def __init__(
        self,
        embedder: LLMEmbedder,
        task: str,
        keys: Sequence[str] | None = None,
        *,
        index: DenseIndex | None = None,
        name: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        embedder.task(task)  # an unknown task is a one-line error now, not after encoding the corpus
        self.embedder = embedder
        self.task = task
        self.batch_size = batch_size
        self.name = name or "dense"
        if index is None:
            if keys is None:
                raise UserError("DenseRetriever needs keys to encode or a prebuilt index")
            vectors = embedder.encode_keys(list(keys), task=task, batch_size=batch_size)
            index = DenseIndex.build(vectors)
        elif keys is not None and len(keys) != index.ntotal:
            raise UserError(f"{len(keys)} keys given for an index of {index.ntotal} vectors")
        if index.dim != embedder.dim:
            raise UserError(
                f"the index has dimension {index.dim} but the encoder {embedder.source} produces {embedder.dim}",
                hint="search with the encoder that built the index",
            )
        self.index = index

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.embedder.encode_queries(list(queries), task=self.task, batch_size=self.batch_size)

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult:
        """Top-k corpus rows per query (queries get the task's query instruction)."""
        if isinstance(queries, str):
            queries = [queries]
        return self.index.search(self.encode_queries(queries), k)

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike[str],
        embedder: LLMEmbedder | None = None,
        *,
        mmap: bool = True,
        name: str | None = None,
        batch_size: int | None = None,
        **embedder_kwargs: Any,
    ) -> DenseRetriever:
        """Open an index folder; without ``embedder`` the encoder recorded in its manifest is loaded."""
        index = DenseIndex.load(folder, mmap=mmap)
        manifest = read_manifest(folder)
        encoder = manifest.get("encoder") or {}
        task = encoder.get("task")
        if not task:
            raise UserError(f"{folder}: the manifest does not say which task built the index", hint="rebuild it")
        if embedder is None:
            embedder = embedder_from_manifest(manifest, **embedder_kwargs)
        else:
            ensure_task(embedder, manifest)
        return cls(embedder, task, index=index, name=name, batch_size=batch_size)


def ensure_task(embedder: LLMEmbedder, manifest: dict[str, Any]) -> None:
    """Register the index's task (saved in the manifest) on ``embedder`` if it does not know it (a user task)."""
    encoder = manifest.get("encoder") or {}
    task = encoder.get("task")
    if task and task not in embedder.tasks and encoder.get("task_spec"):
        embedder.tasks.register(TaskSpec.from_dict(task, encoder["task_spec"], source="index manifest"))


def embedder_from_manifest(manifest: dict[str, Any], model: str | None = None, **kwargs: Any) -> LLMEmbedder:
    """The query encoder of an index: the recorded model (or ``model``), lengths and instructions as built."""
    from llm_embedder.model.embedder import LLMEmbedder

    encoder = manifest.get("encoder") or {}
    kwargs.setdefault("query_max_length", encoder.get("query_max_length"))
    if encoder.get("use_instructions") is not None:
        kwargs.setdefault("use_instructions", bool(encoder["use_instructions"]))
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    source = model or encoder.get("model")
    embedder = LLMEmbedder(None if source in (None, "default") else source, **kwargs)
    ensure_task(embedder, manifest)
    return embedder


def rank_candidates_dense(
    embedder: LLMEmbedder,
    task: str,
    queries: Sequence[str],
    candidate_lists: Sequence[Sequence[str]],
    *,
    batch_size: int | None = None,
) -> list[list[int]]:
    """For each query, the positions of its own candidates (chat history, lrlm chunks), best first.

    Candidates repeat across records (shared history, overlapping chunks), so each distinct text is encoded once;
    all queries and all distinct candidates are encoded in two batched calls; ties keep the original order.
    """
    if len(queries) != len(candidate_lists):
        raise UserError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists")
    distinct: dict[str, int] = {}
    for cands in candidate_lists:
        for text in cands:
            distinct.setdefault(text, len(distinct))
    q = embedder.encode_queries(list(queries), task=task, batch_size=batch_size)
    keys = embedder.encode_keys(list(distinct), task=task, batch_size=batch_size)
    out: list[list[int]] = []
    for i, cands in enumerate(candidate_lists):
        if not cands:
            out.append([])
            continue
        sims = keys[[distinct[t] for t in cands]] @ q[i]
        out.append(top_k_desc(sims, len(cands)).tolist())
    return out


# ---------------------------------------------------------------------------------------------------- index build
BuildMode = Literal["create", "overwrite", "update"]


def _model_source(embedder: Any) -> str:
    source = str(getattr(embedder, "source", "default"))
    path = Path(source).expanduser()
    return str(path.resolve()) if source != "default" and path.exists() else source


def _encoder_section(embedder: Any, spec: TaskSpec, key_template: str) -> dict[str, Any]:
    return {
        "model": _model_source(embedder),
        "task": spec.name,
        "task_spec": spec.to_dict(),
        "key_template": key_template,
        "query_instruction": embedder.instruction(spec.name, "query"),
        "key_instruction": embedder.instruction(spec.name, "key"),
        "use_instructions": bool(getattr(embedder, "use_instructions", True)),
        # vectors of one model in fp32 and bf16 (or torch and onnx-int8) differ: never mix them in one index
        "dtype": str(getattr(embedder, "dtype", "fp32")),
        "backend": str(getattr(embedder, "backend", "torch")),
        "query_max_length": getattr(embedder, "query_max_length", None),
        "key_max_length": getattr(embedder, "key_max_length", None),
        "dim": int(embedder.dim),
    }


def _render_keys(rows: list[dict[str, Any]], template: str, scan: CorpusScan, start: int) -> list[str]:
    fields = template_fields(template)
    keys = []
    for i, row in enumerate(rows):
        for name in fields:
            if name not in row:
                raise DataError(
                    scan.path,
                    int(scan.linenos[start + i]),
                    f"missing (needed by key template {template!r})",
                    field=name,
                    hint="pass --key-template to match your corpus fields",
                )
        keys.append(render_key(template, row))
    return keys


def _partial_folder(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def _encode_shards(
    embedder: Any,
    spec: TaskSpec,
    key_template: str,
    scan: CorpusScan,
    start: int,
    partial: Path,
    fingerprint: dict[str, Any],
    *,
    shard_size: int,
    batch_size: int | None,
    show_progress: bool,
    log: Callable[[str], None],
) -> list[Path]:
    """Encode rows ``start..`` into ``shard-*.npy`` files under ``partial``, skipping shards already finished."""
    from llm_embedder.utils.progress import progress

    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    state_file = partial / "build.json"
    if partial.is_dir():
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            state = {}
        if state.get("key") != key:
            log(f"discarding unfinished build in {partial} (it was for another corpus, encoder or setting)")
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(state_file, {"key": key, **fingerprint})
    total = scan.rows - start
    bounds = [(lo, min(lo + shard_size, scan.rows)) for lo in range(start, scan.rows, shard_size)]
    paths = [partial / f"shard-{i:06d}.npy" for i in range(len(bounds))]
    done = sum(hi - lo for (lo, hi), p in zip(bounds, paths, strict=True) if p.is_file())
    if done:
        log(f"resuming: {done} of {total} rows already encoded in {partial}")
    step = max(1, int(batch_size or getattr(embedder, "batch_size", 32))) * 8
    with progress(total=total, initial=done, desc="encoding keys", unit="row", disable=not show_progress) as bar:
        for (lo, hi), path in zip(bounds, paths, strict=True):
            if path.is_file():
                continue
            rows = read_corpus_rows(scan, lo, hi)
            keys = _render_keys(rows, key_template, scan, lo)
            parts = []
            for j in range(0, len(keys), step):
                chunk = keys[j : j + step]
                parts.append(
                    embedder.encode_keys(chunk, task=spec.name, batch_size=batch_size, show_progress_bar=False)
                )
                bar.update(len(chunk))
            vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
            with atomic_write(path, "wb") as handle:
                np.save(handle, vectors)
    return paths


def build_index_folder(
    corpus: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    embedder: Any | None,
    task: str,
    key_template: str | None = None,
    params: IndexParams | None = None,
    dense: bool = True,
    bm25: bool = False,
    bm25_stemmer: str | None = "english",
    mode: BuildMode = "create",
    shard_size: int = 50_000,
    batch_size: int | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Index ``corpus`` (JSON lines) into the folder ``output``; returns the written manifest.

    ``mode``: ``create`` refuses an existing index, ``overwrite`` rebuilds it, ``update`` encodes only the rows
    appended to the corpus since the index was built (the earlier bytes must be unchanged) and adds them.
    ``embedder`` is an :class:`LLMEmbedder` (anything with ``encode_keys``, ``instruction``, ``task``, ``dim``).
    """
    # One writer per index for the whole run: two builds into one folder would share the partial shards.
    with exclusive_lock(output, what="index"):
        return _build_index_folder(
            corpus,
            Path(output),
            embedder=embedder,
            task=task,
            key_template=key_template,
            params=params,
            dense=dense,
            bm25=bm25,
            bm25_stemmer=bm25_stemmer,
            mode=mode,
            shard_size=shard_size,
            batch_size=batch_size,
            show_progress=show_progress,
            log=log,
        )


def _build_index_folder(
    corpus: str | os.PathLike[str],
    output: Path,
    *,
    embedder: Any | None,
    task: str,
    key_template: str | None,
    params: IndexParams | None,
    dense: bool,
    bm25: bool,
    bm25_stemmer: str | None,
    mode: BuildMode,
    shard_size: int,
    batch_size: int | None,
    show_progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from llm_embedder.tasks.registry import TASKS

    params = params or IndexParams()
    if not dense and not bm25:
        raise UserError("nothing to build", hint="keep the dense index or add --bm25")
    if dense and embedder is None:
        raise UserError("a dense index needs an encoder")
    spec = embedder.task(task) if embedder is not None else TASKS.get(task)
    key_template = key_template or spec.key_template
    template_fields(key_template)
    if shard_size <= 0:
        raise UserError(f"--shard-size must be positive, got {shard_size}")
    recover_folder(output)
    scan = scan_corpus(corpus)
    start = 0
    previous: dict[str, Any] | None = None
    if output.exists():
        if not (output / "manifest.json").is_file() and (not output.is_dir() or any(output.iterdir())):
            raise UserError(
                f"{output} exists and is not an index folder", hint="choose another -o, refusing to replace it"
            )
        if mode == "create":
            raise UserError(
                f"{output} already exists",
                hint="pass --overwrite to rebuild it, or --update to add rows appended to the corpus",
            )
        if mode == "update":
            previous = read_manifest(output)
            start = _check_update(previous, scan, embedder, spec, key_template, dense, bm25)
            if start == scan.rows:
                log(f"{output} is up to date ({scan.rows} rows)")
                return previous
            log(f"updating {output}: {scan.rows - start} new rows after the {start} indexed")
    elif mode == "update":
        raise UserError(f"{output} does not exist, nothing to update", hint="build it first without --update")

    encoder = _encoder_section(embedder, spec, key_template) if embedder is not None else None
    partial = _partial_folder(output)
    index: DenseIndex | None = None
    if dense:
        fingerprint = {
            "corpus_sha256": scan.sha256,
            "encoder": encoder,
            "start": start,
            "shard_size": shard_size,
        }
        paths = _encode_shards(
            embedder,
            spec,
            key_template,
            scan,
            start,
            partial,
            fingerprint,
            shard_size=shard_size,
            batch_size=batch_size,
            show_progress=show_progress,
            log=log,
        )
        shards = [np.load(p, mmap_mode="r") for p in paths]
        if previous is not None:
            index = DenseIndex.load(output, mmap=False)
            index.add(shards, ids=np.arange(start, scan.rows), show_progress=show_progress)
        else:
            index = DenseIndex.build(shards, params=params, show_progress=show_progress)

    retriever_bm25 = None
    if bm25:
        from llm_embedder.retrieval.bm25 import BM25Retriever

        keys = _render_keys(read_corpus_rows(scan, 0, scan.rows), key_template, scan, 0)
        retriever_bm25 = BM25Retriever(keys, stemmer=bm25_stemmer, show_progress=show_progress)

    with atomic_folder(output) as tmp:
        sections: dict[str, Any] = {"count": scan.rows, "encoder": encoder}
        corpus_info = scan.fingerprint()
        corpus_info["key_template"] = key_template
        corpus_info["offsets"] = OFFSETS_FILE
        sections["corpus"] = corpus_info
        np.save(tmp / OFFSETS_FILE, scan.offsets)
        sections["dense"] = index.write_files(tmp) if index is not None else None
        sections["bm25"] = retriever_bm25.write_files(tmp) if retriever_bm25 is not None else None
        manifest = write_manifest(tmp, sections)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def _check_update(
    previous: dict[str, Any],
    scan: CorpusScan,
    embedder: Any,
    spec: TaskSpec,
    key_template: str,
    dense: bool,
    bm25: bool,
) -> int:
    """Rows already indexed, after checking the corpus only grew and the encoder/task/template are unchanged."""
    old_corpus = previous.get("corpus") or {}
    old_rows = int(old_corpus.get("rows", 0))
    old_bytes = int(old_corpus.get("bytes", 0))
    if old_corpus.get("key_template") != key_template:
        raise UserError(
            f"the index was built with key template {old_corpus.get('key_template')!r}, not {key_template!r}",
            hint="pass the same --key-template, or --overwrite to rebuild",
        )
    if (
        scan.rows < old_rows
        or scan.bytes < old_bytes
        or corpus_prefix_sha256(scan.path, old_bytes) != old_corpus.get("sha256")
    ):
        raise UserError(
            f"{scan.path}: the corpus changed before row {old_rows} since the index was built "
            "(only appending is allowed)",
            hint="pass --overwrite to rebuild the index",
        )
    if dense != bool(previous.get("dense")) or bm25 != bool(previous.get("bm25")):
        raise UserError(
            "--update must keep the same parts (dense / --bm25) as the existing index", hint="or pass --overwrite"
        )
    old_encoder = previous.get("encoder") or {}
    if dense and embedder is not None:
        now = _encoder_section(embedder, spec, key_template)
        defaults = {"dtype": "fp32", "backend": "torch"}  # what indexes written before they were recorded used
        for field in ("model", "task", "key_instruction", "use_instructions", "dim", "dtype", "backend"):
            if old_encoder.get(field, defaults.get(field)) != now.get(field):
                raise UserError(
                    f"the index was built with {field} {old_encoder.get(field, defaults.get(field))!r}, "
                    f"now {now.get(field)!r}",
                    hint="update with the same encoder and task, or pass --overwrite",
                )
    return old_rows
