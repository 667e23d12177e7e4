"""Stage 1 of the pipeline: put each task's train/dev records (and corpus) into the run folder.

Files in the record format are validated and, when the recipe says so, subsampled with a fixed seed (so the CPU
reproduction stays affordable and says exactly how much data it used). Built-in sources generate demo data from
Python's standard library.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from llm_embedder.data.jsonl import iter_jsonl, write_jsonl
from llm_embedder.data.records import Record
from llm_embedder.errors import UserError
from llm_embedder.pipeline.config import PipelineConfig, TaskData


def cap_candidates(obj: dict[str, Any], max_candidates: int) -> dict[str, Any]:
    """Keep the positives and the first negatives, ``max_candidates`` in all (indices and scores cut alike)."""
    pos, neg = obj.get("pos") or [], obj.get("neg") or []
    if len(pos) + len(neg) <= max_candidates:
        return obj
    n_pos = min(len(pos), max_candidates)
    n_neg = max_candidates - n_pos
    out = dict(obj, pos=pos[:n_pos], neg=neg[:n_neg])
    for name in ("pos_index", "pos_grades"):
        if obj.get(name) is not None:
            out[name] = obj[name][:n_pos]
    if obj.get("neg_index") is not None:
        out["neg_index"] = obj["neg_index"][:n_neg]
    if obj.get("teacher_scores") is not None:
        scores = obj["teacher_scores"]
        out["teacher_scores"] = scores[:n_pos] + scores[len(pos) : len(pos) + n_neg]
    return out


def subsample_file(
    src: Path, dst: Path, *, task: str, limit: int | None, seed: int, max_candidates: int | None = None
) -> int:
    """Validate every record of ``src`` and write ``limit`` of them (seeded, original order kept) to ``dst``."""
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(src):
        Record.from_dict(obj, path=str(src), lineno=lineno, task=task)
        obj.setdefault("task", task)
        rows.append(cap_candidates(obj, max_candidates) if max_candidates else obj)
    if limit is not None and limit < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    return write_jsonl(dst, rows)


def _build_stdlib_tools(data: TaskData, out: Path, seed: int) -> dict[str, Any]:
    from llm_embedder.pipeline.stdlib_data import build_tool_task

    built = build_tool_task(seed=seed)
    write_jsonl(out / "corpus.jsonl", built["corpus"])
    counts = {}
    for split, limit in (("train", data.limit_train), ("dev", data.limit_dev)):
        rows = built[split]
        if limit is not None and limit < len(rows):
            rows = rows[:limit]
        counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
    return {"corpus": str(out / "corpus.jsonl"), **counts}


def _build_stdlib_lrlm(data: TaskData, out: Path, seed: int, lm: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from llm_embedder.builders.lrlm import LrlmOptions, build_lrlm_records
    from llm_embedder.lm.loading import resolve_lm
    from llm_embedder.pipeline.stdlib_data import lrlm_files

    tokenizer = AutoTokenizer.from_pretrained(resolve_lm(lm))
    options = LrlmOptions(**{"chunk_tokens": 96, "max_candidates": 8, "every": 6, "min_history": 4, **data.options})
    counts = {}
    for split, limit in (("train", data.limit_train), ("dev", data.limit_dev)):
        rows, _ = build_lrlm_records(lrlm_files(split), tokenizer, options)
        if limit is not None and limit < len(rows):
            keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
            rows = [rows[i] for i in keep]
        counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
    return counts


def build_task(config: PipelineConfig, task: str, data: TaskData) -> dict[str, Any]:
    """Write ``data/<task>/{train,dev}.jsonl`` in the run folder; returns counts and the corpus path."""
    out = Path(config.output_dir) / "data" / task
    out.mkdir(parents=True, exist_ok=True)
    if data.source == "stdlib_tools":
        return _build_stdlib_tools(data, out, config.seed)
    if data.source == "stdlib_lrlm":
        return _build_stdlib_lrlm(data, out, config.seed, config.lm)
    if data.source is not None:
        raise UserError(f"task {task}: unknown data source {data.source!r}", hint="use stdlib_tools or stdlib_lrlm")
    result: dict[str, Any] = {}
    for split, limit in (("train", data.limit_train), ("dev", data.limit_dev)):
        src = config.resolve(getattr(data, split))
        if src is None:
            raise UserError(f"task {task}: no {split} file given in the recipe")
        result[split] = subsample_file(
            src,
            out / f"{split}.jsonl",
            task=task,
            limit=limit,
            seed=config.seed,
            max_candidates=data.max_candidates if split == "train" else None,
        )
    corpus = config.resolve(data.corpus)
    result["corpus"] = str(corpus.resolve()) if corpus is not None else None
    return result
