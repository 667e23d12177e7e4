"""``llm-embedder build icl``: demonstration pools and in-context-learning records from labelled task files.

Each input is one task: a JSON-lines file of labelled examples (``NAME=PATH`` names the task, else the file
name does). ``--input-template`` turns an example's fields into the model input (default ``"{input}"``, e.g.
``"Review: {sentence}\\nIs the sentiment of this review Positive or Negative?"``) and ``--output-template`` into
its label text (default ``"{output}"``; ``--label-map`` renames raw labels). Written to ``-o DIR``:

- ``corpus.jsonl``: every task's pool as rows ``{"title": "", "text": "{input}\\n{output}", "task": NAME}``
  (identical examples of a task kept once);
- ``records.jsonl``: icl records: ``query`` = input, ``answers`` = [output], ``options`` = the task's label set
  (when it has at most ``--max-options`` labels, i.e. classification), ``neg``/``neg_index`` = the top-k BM25
  examples of the SAME task's pool (query = input), never the query's own example nor one with the same input
  (no label leak), ``pos`` = [] (the LLM reward decides which demonstrations help).

Queries are the pool's own examples (leave-one-out), or come from ``--queries NAME=PATH`` files of held-out
examples; ``--max-queries-per-task`` samples them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_embedder.data.jsonl import iter_jsonl, write_jsonl
from llm_embedder.data.records import Record, write_records
from llm_embedder.errors import DataError, UserError
from llm_embedder.utils.templates import render_template, template_fields


@dataclass
class Example:
    input: str
    output: str
    source: str  # "file:line"
    index: int  # position in its file


@dataclass
class TaskPool:
    """One task's demonstration pool: unique examples and their corpus rows."""

    name: str
    examples: list[Example] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def labels(self) -> list[str]:
        return sorted({e.output for e in self.examples})


def parse_named(spec: str) -> tuple[str, str]:
    """``"sst2=data/sst2.jsonl"`` -> (sst2, path); a bare path is named after its file."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not name.strip():
            raise UserError(f"empty task name in {spec!r}", hint="use NAME=PATH")
        return name.strip(), path
    return Path(spec).name.split(".")[0], spec


def parse_label_map(text: str | None) -> dict[str, str]:
    """``"entailment=true,contradiction=false"`` -> {"entailment": "true", ...} (raw label -> verbaliser)."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise UserError(f"bad --label-map entry {item!r}", hint="use LABEL=WORD,LABEL=WORD")
        raw, word = item.split("=", 1)
        out[raw.strip()] = word.strip()
    return out


def read_examples(
    path: str, input_template: str, output_template: str, label_map: dict[str, str] | None = None
) -> list[Example]:
    """Labelled examples of one file, rendered through the templates (a missing field names file:line)."""
    template_fields(input_template)
    template_fields(output_template)
    out = []
    for index, (lineno, obj) in enumerate(iter_jsonl(path)):
        where = f"{path}:{lineno}"
        text_in = render_template(input_template, obj, where=where).strip()
        text_out = render_template(output_template, obj, where=where).strip()
        text_out = (label_map or {}).get(text_out, text_out)
        if not text_in:
            raise DataError(path, lineno, "the input template renders to an empty text", hint="check --input-template")
        out.append(Example(text_in, text_out, where, index))
    return out


def example_key(example: Example) -> str:
    return f"{example.input}\n{example.output}"


def build_icl(
    pools: Sequence[str],
    output_dir: str,
    *,
    queries: Sequence[str] = (),
    input_template: str = "{input}",
    output_template: str = "{output}",
    label_map: dict[str, str] | None = None,
    k: int = 20,
    max_queries_per_task: int = 0,
    max_options: int = 20,
    seed: int = 0,
    stemmer: str | None = "english",
    task: str = "icl",
) -> tuple[int, int]:
    """Write ``corpus.jsonl`` and ``records.jsonl`` under ``output_dir``; returns (corpus rows, records)."""
    from llm_embedder.retrieval.bm25 import BM25Retriever

    if k <= 0:
        raise UserError(f"-k must be positive, got {k}")
    task_pools: dict[str, TaskPool] = {}
    corpus_rows: list[dict[str, Any]] = []
    for spec in pools:
        name, path = parse_named(spec)
        if name in task_pools:
            raise UserError(f"task {name!r} is given twice", hint="name the pools NAME=PATH")
        pool = TaskPool(name)
        seen: set[str] = set()
        for example in read_examples(path, input_template, output_template, label_map):
            key = example_key(example)
            if key in seen:
                continue
            seen.add(key)
            pool.examples.append(example)
            pool.rows.append(len(corpus_rows))
            corpus_rows.append({"title": "", "text": key, "task": name})
        task_pools[name] = pool

    held_out: dict[str, list[Example]] = {}
    for spec in queries:
        name, path = parse_named(spec)
        if name not in task_pools:
            raise UserError(f"queries for unknown task {name!r}", hint=f"pools: {', '.join(task_pools)}")
        for example in read_examples(path, input_template, output_template, label_map):
            example.index = len(held_out.setdefault(name, []))  # unique query ids across several files
            held_out[name].append(example)

    rng = random.Random(seed)
    records: list[Record] = []
    for name, pool in task_pools.items():
        keys = [corpus_rows[r]["text"] for r in pool.rows]
        retriever = BM25Retriever(keys, stemmer=stemmer)
        labels = pool.labels()
        # options in the label map's order (the verbalisers as the user listed them), the rest sorted
        mapped = [w for w in dict.fromkeys((label_map or {}).values()) if w in labels]
        labels = mapped + [w for w in labels if w not in mapped]
        options = labels if 0 < len(labels) <= max_options else None
        own = name not in held_out
        candidates = pool.examples if own else held_out[name]
        chosen = list(range(len(candidates)))
        if max_queries_per_task and len(chosen) > max_queries_per_task:
            chosen = sorted(rng.sample(chosen, max_queries_per_task))
        picked = [candidates[i] for i in chosen]
        same_input = Counter(e.input for e in pool.examples)
        for example in picked:
            # the query's own example and other examples with the same input are dropped after retrieval
            depth = min(len(keys), k + same_input[example.input])
            neg, neg_index = [], []
            for pos_in_pool, _ in retriever.search([example.input], depth).hits(0):
                if pool.examples[pos_in_pool].input == example.input:
                    continue
                neg.append(keys[pos_in_pool])
                neg_index.append(pool.rows[pos_in_pool])
                if len(neg) == k:
                    break
            split = "pool" if own else "query"
            records.append(
                Record(
                    query=example.input,
                    pos=[],
                    neg=neg,
                    neg_index=neg_index,
                    answers=[example.output],
                    options=options,
                    task=task,
                    query_id=f"{name}-{split}-{example.index}",
                )
            )
    if not records:
        raise UserError("no icl records were made", hint="are the pool files empty?")
    out = Path(output_dir)
    write_jsonl(out / "corpus.jsonl", corpus_rows)
    write_records(out / "records.jsonl", records)
    return len(corpus_rows), len(records)
