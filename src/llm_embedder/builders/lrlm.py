"""``llm-embedder build lrlm``: long-range LM scoring inputs from plain text files (the reference never released this).

Each file is one document. It is cut into chunks of ``--chunk-tokens`` tokens of the LM's tokenizer (the LM that
will score them, so a chunk is exactly the unit the LM sees). For query positions ``i = min_history,
min_history + every, ...`` that have a next chunk, a record is::

    {"query": chunk i, "answers": [chunk i+1], "pos": [], "neg": [up to max_candidates chunks before i],
     "task": "lrlm", "query_id": "<document>#<i>"}

- the format of ``tasks/lrlm/*.jsonl`` of the development data. ``llm-embedder score --task lrlm`` then fills
``teacher_scores`` (one per earlier chunk: how much it helps the LM predict the next chunk).

Chunks are cut at token boundaries of the ORIGINAL text (character offsets of the tokens), so the chunks of a
document concatenate back to the document exactly (from its first token on) and no character is split or
re-spelled by decoding.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_embedder.errors import DataError, UserError
from llm_embedder.lm.loading import resolve_lm
from llm_embedder.utils.files import atomic_write


@dataclass
class LrlmOptions:
    """How documents are cut into lrlm records."""

    chunk_tokens: int = 128
    max_candidates: int = 32
    every: int = 12
    min_history: int = 4

    def validate(self) -> None:
        for name in ("chunk_tokens", "max_candidates", "every", "min_history"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


def chunk_text(tokenizer: Any, text: str, chunk_tokens: int) -> list[str]:
    """``text`` cut into pieces of ``chunk_tokens`` tokens, at the tokens' character offsets."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = encoded["offset_mapping"]
    if not offsets:
        return []
    starts = [offsets[k][0] for k in range(0, len(offsets), chunk_tokens)]
    ends = starts[1:] + [len(text)]
    return [text[s:e] for s, e in zip(starts, ends, strict=True)]


def document_records(document: str, chunks: Sequence[str], options: LrlmOptions) -> Iterator[dict[str, Any]]:
    """The records of one chunked document."""
    for i in range(options.min_history, len(chunks) - 1, options.every):
        yield {
            "query": chunks[i],
            "answers": [chunks[i + 1]],
            "pos": [],
            "neg": list(chunks[max(0, i - options.max_candidates) : i]),
            "task": "lrlm",
            "query_id": f"{document}#{i}",
        }


def read_document(path: Path) -> str:
    """A text file (``.gz`` accepted) as one string; bad files are one-line errors."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data[: exc.start].count(b"\n") + 1
        raise DataError(
            str(path), lineno, f"not valid UTF-8 (byte {exc.start})", hint="re-encode the file as UTF-8"
        ) from None


@dataclass
class BuildSummary:
    documents: int = 0
    records: int = 0
    short_documents: int = 0


def build_lrlm_records(
    paths: Sequence[str | Path], tokenizer: Any, options: LrlmOptions | None = None
) -> tuple[list[dict[str, Any]], BuildSummary]:
    """Records for every document; a document too short for one record is counted, not an error."""
    options = options or LrlmOptions()
    options.validate()
    records: list[dict[str, Any]] = []
    summary = BuildSummary()
    for path in paths:
        path = Path(path)
        chunks = chunk_text(tokenizer, read_document(path), options.chunk_tokens)
        found = list(document_records(str(path), chunks, options))
        summary.documents += 1
        summary.short_documents += not found
        records.extend(found)
    summary.records = len(records)
    return records, summary


def build_lrlm(
    texts: Sequence[str | Path], output: str | Path, *, lm: str | None = None, options: LrlmOptions | None = None
) -> BuildSummary:
    """Write the lrlm records of ``texts`` to ``output`` (JSON lines), chunked with ``lm``'s tokenizer."""
    from transformers import AutoTokenizer

    options = options or LrlmOptions()
    options.validate()
    for text in texts:
        if not Path(text).is_file():
            raise UserError(f"{text}: file not found")
    tokenizer = AutoTokenizer.from_pretrained(resolve_lm(lm))
    records, summary = build_lrlm_records(texts, tokenizer, options)
    if not records:
        need = options.min_history + 2
        raise UserError(
            f"no records: every document is shorter than {need} chunks of {options.chunk_tokens} tokens",
            hint="give longer texts, or lower --chunk-tokens / --min-history",
        )
    with atomic_write(output) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return summary
