"""Scoring a file so that a killed run resumes where it stopped and ends with exactly the same bytes.

Layout beside ``OUT`` (``R`` = rank, ``W`` = world size; ``OUT.partial`` when ``W == 1``)::

    OUT.rankR-of-W.partial             finished records as JSON lines, in input order (this rank's chunks)
    OUT.rankR-of-W.partial.state.json  {"fingerprint", "chunks_done", "bytes", "lines_per_chunk", "skipped", ...}

The input is cut into fixed-size chunks of records (chunk ``c`` belongs to rank ``c % W``). A finished chunk is
appended to the partial file, flushed and fsync'ed, and only then is the state file (written atomically) moved
forward. On restart the partial file is truncated to the state's byte count - which drops a torn line or a chunk
that was written but not recorded - and the recorded chunks are skipped. The fingerprint (input bytes + every
option that changes a score or the chunking) must match, so a partial file is never continued with another
input or other options. Batches are made within a chunk only, so a chunk's scores do not depend on where a run
started: resumed and uninterrupted runs write identical bytes. At the end the parts are merged (or, for one
process, renamed) atomically into ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_embedder.data.jsonl import iter_jsonl
from llm_embedder.data.records import Record
from llm_embedder.errors import DataError, UserError
from llm_embedder.prompts import RecordPrompts, check_record
from llm_embedder.reward.distributed import DistributedContext
from llm_embedder.reward.scorer import RewardScorer
from llm_embedder.tasks.registry import TASKS, TaskRegistry
from llm_embedder.utils.files import atomic_write, write_json

STATE_VERSION = 1


@dataclass
class ScoreFileResult:
    """What a scoring run did."""

    output: Path
    records: int = 0
    written: int = 0
    candidates: int = 0
    skipped: int = 0
    first_skip: str | None = None
    resumed_records: int = 0


@dataclass
class _State:
    fingerprint: str
    chunks_done: int = 0
    bytes: int = 0
    lines_per_chunk: list[int] = field(default_factory=list)
    records_done: int = 0
    candidates: int = 0
    skipped: int = 0
    first_skip: str | None = None
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self.__dict__}

    @classmethod
    def load(cls, path: Path) -> _State | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.pop("version", None) != STATE_VERSION:
            return None
        try:
            return cls(**data)
        except TypeError:
            return None


def partial_paths(output: Path, dist: DistributedContext, rank: int | None = None) -> tuple[Path, Path]:
    """``(partial file, state file)`` of ``rank`` (default: this process's rank)."""
    rank = dist.rank if rank is None else rank
    suffix = ".partial" if dist.world_size == 1 else f".rank{rank}-of-{dist.world_size}.partial"
    partial = output.with_name(output.name + suffix)
    return partial, partial.with_name(partial.name + ".state.json")


def file_fingerprint(path: Path, options: dict[str, Any]) -> str:
    """sha256 over the options (canonical JSON) and the input's bytes."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode("utf-8"))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_records(path: Path) -> int:
    """Non-blank lines of a JSON-lines file (for the progress bar)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _chunks(path: Path, chunk_size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    chunk: list[tuple[int, dict[str, Any]]] = []
    for lineno, obj in iter_jsonl(path):
        chunk.append((lineno, obj))
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def precheck_file(path: Path, *, task: str | None, registry: TaskRegistry | None = None) -> int:
    """Validate every record (fields, task, candidates, answers) before an LLM is loaded; returns the count."""
    registry = registry if registry is not None else TASKS
    count = 0
    for lineno, obj in iter_jsonl(path):
        record = Record.from_dict(obj, path=str(path), lineno=lineno, task=task, registry=registry)
        if record.task is None:
            raise DataError(str(path), lineno, "missing", field="task", hint="pass --task or give each record a 'task'")
        check_record(record, registry.get(record.task))
        count += 1
    return count


def _open_state(partial: Path, state_path: Path, fingerprint: str, restart: bool, skip_invalid: bool) -> _State:
    if restart:
        for path in (partial, state_path):
            path.unlink(missing_ok=True)
    state = _State.load(state_path) if state_path.exists() else None
    if state is not None and state.chunks_done == 0:
        state = None  # nothing done yet: nothing to protect
    if state is not None and state.fingerprint != fingerprint:
        raise UserError(
            f"{partial} was made from another input or with other options",
            hint="rerun the command that made it, or pass --restart to discard it",
        )
    if state is not None and state.skipped and not skip_invalid:
        # --skip-invalid is not in the fingerprint: records scored without it are valid either way
        raise UserError(
            f"{partial} skipped {state.skipped} invalid records (--skip-invalid); continuing without it would differ",
            hint="rerun with --skip-invalid, or pass --restart to start over",
        )
    if state is None or not partial.exists() or partial.stat().st_size < state.bytes:
        state = _State(fingerprint=fingerprint)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "ab") as handle:
        handle.truncate(state.bytes)  # drop a torn line / a chunk whose state was not saved
        handle.flush()
        os.fsync(handle.fileno())
    write_json(state_path, state.to_dict())
    return state


def score_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    scorer: RewardScorer,
    *,
    chunk_size: int = 64,
    skip_invalid: bool = False,
    options: dict[str, Any] | None = None,
    dist: DistributedContext | None = None,
    restart: bool = False,
    show_progress: bool = True,
) -> ScoreFileResult:
    """Fill ``teacher_scores`` of every record of ``input_path`` and write them to ``output_path`` (resumable).

    Args:
        input_path: JSON-lines records.
        output_path: where the scored records go (written only when everything is scored).
        scorer: the reward scorer (its ``task`` / the records' ``task`` decide the prompts).
        chunk_size: records per resumable unit; batches never cross a chunk, so keep it the same on restart.
        skip_invalid: drop invalid records (counted) instead of stopping at the first one.
        options: anything else that changes the scores (LM, dtype, ...), folded into the fingerprint.
        dist: rank and world size (default: from torchrun's environment variables).
        restart: discard a previous partial run instead of continuing it.
        show_progress: tqdm bar with records/s and ETA (rank 0 only).
    """
    if chunk_size < 1:
        raise UserError(f"--chunk-size must be positive, got {chunk_size}")
    input_path = Path(input_path)
    output = Path(output_path)
    if not input_path.is_file():
        raise UserError(f"{input_path}: file not found")
    if output.resolve() == input_path.resolve():
        raise UserError(f"output {output} is the input file", hint="choose another -o path")
    dist = dist or DistributedContext.from_env()
    fingerprint_options = {
        "state_version": STATE_VERSION,
        "task": scorer.task,
        "template": scorer.template,
        "reduction": scorer.reduction,
        "max_key_tokens": scorer.max_key_tokens,
        "max_length": scorer.max_length,
        "token_budget": scorer.token_budget,
        "max_batch_size": scorer.max_batch_size,
        "add_bos": scorer.add_bos,
        "chunk_size": chunk_size,
        "world_size": dist.world_size,
        **(options or {}),
    }
    fingerprint = file_fingerprint(input_path, fingerprint_options)
    partial, state_path = partial_paths(output, dist)
    state = _open_state(partial, state_path, fingerprint, restart, skip_invalid)
    result = ScoreFileResult(output=output, resumed_records=state.records_done)

    progress = None
    if show_progress and dist.is_main:
        from tqdm.auto import tqdm

        total = count_records(input_path)
        share = total if dist.world_size == 1 else -(-total // dist.world_size)
        progress = tqdm(
            total=share, initial=state.records_done, desc="scoring", unit="rec", dynamic_ncols=True, smoothing=0.1
        )
    try:
        own = 0
        for index, chunk in enumerate(_chunks(input_path, chunk_size)):
            if index % dist.world_size != dist.rank:
                continue
            own += 1
            if own <= state.chunks_done:
                continue
            lines, candidates, skipped, first_skip = _score_chunk(input_path, chunk, scorer, skip_invalid)
            data = "".join(lines).encode("utf-8")
            with open(partial, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            state.chunks_done += 1
            state.bytes += len(data)
            state.lines_per_chunk.append(len(lines))
            state.records_done += len(chunk)
            state.candidates += candidates
            state.skipped += skipped
            state.first_skip = state.first_skip or first_skip
            write_json(state_path, state.to_dict())
            if progress is not None:
                progress.update(len(chunk))
        state.complete = True
        write_json(state_path, state.to_dict())
    finally:
        if progress is not None:
            progress.close()

    dist.barrier()
    if dist.is_main:
        totals = _merge(output, dist)
        result.records, result.written, result.candidates, result.skipped, result.first_skip = totals
    dist.barrier()
    return result


def _score_chunk(
    input_path: Path, chunk: list[tuple[int, dict[str, Any]]], scorer: RewardScorer, skip_invalid: bool
) -> tuple[list[str], int, int, str | None]:
    """JSON lines of a chunk's scored records, candidates scored, records skipped, the first skip reason."""
    records: list[Record] = []
    prepared: list[RecordPrompts] = []
    skipped = 0
    first_skip: str | None = None
    for lineno, obj in chunk:
        try:
            record = Record.from_dict(
                obj, path=str(input_path), lineno=lineno, task=scorer.task, registry=scorer.registry
            )
            prompts = scorer.prepare(record)
        except DataError as exc:
            if not skip_invalid:
                raise
            skipped += 1
            first_skip = first_skip or exc.line()
            continue
        records.append(record)
        prepared.append(prompts)
    scores = scorer.score_prepared(prepared) if prepared else []
    lines = []
    candidates = 0
    for record, teacher_scores in zip(records, scores, strict=True):
        record.teacher_scores = teacher_scores
        candidates += len(teacher_scores)
        lines.append(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return lines, candidates, skipped, first_skip


def _merge(output: Path, dist: DistributedContext) -> tuple[int, int, int, int, str | None]:
    """Rank 0: put every rank's chunks back in input order into ``output``; remove the parts."""
    states = []
    for rank in range(dist.world_size):
        partial, state_path = partial_paths(output, dist, rank)
        state = _State.load(state_path)
        if state is None or not state.complete:
            raise UserError(f"rank {rank} did not finish ({state_path})", hint="rerun the same command to resume")
        states.append((partial, state_path, state))
    if dist.world_size == 1:
        partial, state_path, state = states[0]
        os.replace(partial, output)
        state_path.unlink(missing_ok=True)
    else:
        handles = [open(partial, encoding="utf-8") for partial, _, _ in states]
        try:
            with atomic_write(output) as out:
                chunks = sum(len(s.lines_per_chunk) for _, _, s in states)
                for index in range(chunks):
                    rank, local = index % dist.world_size, index // dist.world_size
                    for _ in range(states[rank][2].lines_per_chunk[local]):
                        out.write(handles[rank].readline())
        finally:
            for handle in handles:
                handle.close()
        for partial, state_path, _ in states:
            partial.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
    records = sum(s.records_done for _, _, s in states)
    written = sum(sum(s.lines_per_chunk) for _, _, s in states)
    candidates = sum(s.candidates for _, _, s in states)
    skipped = sum(s.skipped for _, _, s in states)
    first_skip = next((s.first_skip for _, _, s in states if s.first_skip), None)
    return records, written, candidates, skipped, first_skip
