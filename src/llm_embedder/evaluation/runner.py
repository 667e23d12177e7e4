"""Orchestration of an evaluation: records -> each retriever's retrieval -> retrieval metrics -> LLM metrics.

:func:`evaluate` is the Python API behind ``llm-embedder eval`` and the end-to-end pipeline. It knows no task by
name: the task table says which scenario evaluator runs (``evaluation.downstream``), which retrieval metrics are
computed (``evaluation.metrics``) and how many keys go into a prompt (``evaluation.top_k``).
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import Record, load_records
from llm_embedder.errors import UserError
from llm_embedder.evaluation.downstream.base import DownstreamEvaluator, DownstreamSettings, LanguageModel
from llm_embedder.evaluation.downstream.registry import get_downstream
from llm_embedder.evaluation.metrics import mean_metrics, per_query_metrics, record_query_ids
from llm_embedder.evaluation.retrieve import RetrievalOutcome, retrieve
from llm_embedder.evaluation.retrievers import EvalRetriever, build_retriever, caching_loader
from llm_embedder.evaluation.significance import (
    DEFAULT_BASELINES,
    check_baselines,
    compare_to_baselines,
    pairing_label,
)
from llm_embedder.tasks.registry import TASKS, TaskRegistry
from llm_embedder.tasks.spec import TaskSpec

RESULTS_FORMAT = 1
_CUTOFF = re.compile(r"@(\d+)$")


def select_records(
    records: Sequence[Record], limit: int | None, *, sample: Literal["first", "random"] = "first", seed: int = 0
) -> list[Record]:
    """At most ``limit`` records: the first ones, or a seeded random subset kept in file order."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if sample == "first":
        return list(records[:limit])
    if sample == "random":
        chosen = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
        return [records[int(i)] for i in chosen]
    raise UserError(f"unknown sampling {sample!r}", hint="choose first or random")


def retrieval_depth(metrics: Sequence[str], top_k: int) -> int:
    """How many corpus hits to fetch: enough for the prompt and for the deepest metric cut-off (``ndcg@10``)."""
    cutoffs = [int(m.group(1)) for m in (_CUTOFF.search(name) for name in metrics) if m]
    return max([top_k, 10, *cutoffs])


def load_language_model(lm: Any, *, dtype: str = "fp32", device: str | None = None) -> LanguageModel:
    """A :class:`LanguageModel` from a name/path (``None`` = the bundled SmolLM2), a ``(model, tokenizer)`` pair
    or a ready :class:`LanguageModel`."""
    if isinstance(lm, LanguageModel):
        return lm
    if isinstance(lm, tuple) and len(lm) == 2:
        return LanguageModel(lm[0], lm[1], name=type(lm[0]).__name__)
    from llm_embedder.lm.loading import DEFAULT_LM, load_causal_lm

    model, tokenizer = load_causal_lm(lm, dtype=dtype, device=device)
    return LanguageModel(model, tokenizer, name=str(lm) if lm is not None else DEFAULT_LM)


def retrieval_metrics(
    outcome: RetrievalOutcome, metrics: Sequence[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The task's retrieval metrics over the judged records (a judged record without hits scores 0): the means, and
    the per-query values ``{metric: {query id: value}}`` they average, kept for paired comparisons."""
    if not outcome.qrels or not metrics:
        return {}, {}
    rows = per_query_metrics(outcome.run, outcome.qrels, list(metrics))
    means = {name: float(value) for name, value in mean_metrics(rows.values()).items()}
    return means, {name: {qid: values[name] for qid, values in rows.items()} for name in means}


def _resolve_task(task: str | TaskSpec, registry: TaskRegistry | None) -> tuple[TaskSpec, TaskRegistry]:
    registry = registry if registry is not None else TASKS
    if isinstance(task, TaskSpec):
        if task.name not in registry or registry.get(task.name) != task:
            registry = registry.copy()
            registry.register(task, overwrite=True)
        return task, registry
    return registry.get(task), registry


def _log(show: bool, message: str) -> None:
    if show:
        print(message, file=sys.stderr, flush=True)


def evaluate(
    task: str | TaskSpec,
    data: str | os.PathLike[str] | Sequence[Record],
    retrievers: Sequence[str | EvalRetriever],
    *,
    corpus: str | os.PathLike[str] | Corpus | None = None,
    lm: Any = None,
    limit: int | None = None,
    sample: Literal["first", "random"] = "first",
    seed: int = 0,
    top_k: int | None = None,
    max_prompt_tokens: int = 1024,
    max_new_tokens: int = 16,
    candidates_only: bool = False,
    downstream: bool = True,
    downstream_limit: int | None = None,
    key_template: str | None = None,
    lm_dtype: str = "fp32",
    device: str | None = None,
    registry: TaskRegistry | None = None,
    settings: DownstreamSettings | None = None,
    baselines: Sequence[str] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Compare ``retrievers`` on ``task``: retrieval metrics and the LLM's downstream metrics, per retriever.

    Args:
        task: a registered task name or a :class:`TaskSpec`.
        data: a JSON-lines file of records, or the records.
        retrievers: spec strings (``none``, ``random``, ``recency``, ``bm25``, ``hybrid``, ``default``, an encoder
            folder or hub id, ``label=spec``) or ready :class:`EvalRetriever` objects.
        corpus: a corpus file/:class:`Corpus` to retrieve from; without it each record's candidates are ranked.
        lm: causal LM name/path (default: bundled SmolLM2), ``(model, tokenizer)`` or a :class:`LanguageModel`.
        limit / sample / seed: evaluate only ``limit`` records (the first ones, or a seeded random subset).
        top_k: keys per prompt (default: the task table's ``evaluation.top_k``).
        max_prompt_tokens: prompt budget; the least relevant keys are dropped or cut first, never the target.
        candidates_only: rank the records' own candidates even when a corpus is given.
        downstream: False skips the LLM (retrieval metrics only).
        downstream_limit: give the LLM only the first N of the evaluated records (retrieval metrics still use all
            of them): the LLM is the expensive part, the retrieval metrics want many records.
        key_template: render corpus rows with this instead of the task's ``key_template``.
        baselines: retrievers every other one is compared with on the main retrieval metric, query by query
            (:mod:`llm_embedder.evaluation.significance`; seeded with ``seed``). Default: ``bm25`` and ``base``
            when present.

    Returns:
        a JSON-able dict: ``results`` maps each retriever label to ``{metric: value}``; ``metrics`` lists the
        columns in display order, ``lower_is_better`` the metrics where smaller wins; ``per_query`` holds the
        retrieval metrics' per-query values and those of the LLM metrics that are means over records
        (``{retriever: {metric: {query id: value}}}``) and ``paired`` the
        comparisons on ``paired_metric`` (``{retriever: {baseline: {diff, ci_low, ci_high, p, n}}}``); plus run
        details.
    """
    started = time.perf_counter()
    spec, registry = _resolve_task(task, registry)
    evaluator_cls = get_downstream(spec.evaluation.downstream, task=spec.name)
    settings = settings or DownstreamSettings(
        top_k=top_k, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, show_progress=show_progress
    )
    if settings.top_k is not None and settings.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {settings.top_k}")
    if downstream_limit is not None and downstream_limit < 1:
        raise UserError(f"--downstream-limit must be at least 1, got {downstream_limit}")
    if settings.max_prompt_tokens < 16:
        raise UserError(f"--max-prompt-tokens must be at least 16, got {settings.max_prompt_tokens}")
    evaluator: DownstreamEvaluator = evaluator_cls(spec, settings)

    if isinstance(data, (str, os.PathLike)):
        data_name = str(data)
        records = load_records(data, task=spec.name, registry=registry)
    else:
        data_name = "<records>"
        records = list(data)
    records = select_records(records, limit, sample=sample, seed=seed)
    if not records:
        raise UserError(f"{data_name}: no records to evaluate")
    run_downstream = downstream and evaluator.needs_lm
    lm_records = records[:downstream_limit]
    skipped: str | None = None
    if run_downstream and not any(r.answers for r in lm_records):
        # a retrieval-only set (most BEIR-style sets have no answers): the retrieval metrics are still worth having
        run_downstream = False
        skipped = f"no record has 'answers' (a retrieval-only set): the {evaluator.name} LLM metrics were skipped"
        print(f"[eval {spec.name}] {skipped}", file=sys.stderr, flush=True)
    if run_downstream:
        evaluator.check_records(lm_records)
        if lm is None or isinstance(lm, (str, os.PathLike)):
            from llm_embedder.lm.loading import resolve_lm

            resolve_lm(lm)  # a wrong --lm fails now, not after the retrieval work

    if isinstance(corpus, (str, os.PathLike)):
        corpus_name: str | None = str(corpus)
        corpus = Corpus.from_file(corpus, key_template or spec.key_template)
    else:
        corpus_name = getattr(corpus, "path", None) if corpus is not None else None

    if not retrievers:
        raise UserError("no retriever to evaluate", hint="pass --retriever NAME (none, bm25, default, a folder ...)")
    load = caching_loader(device=device)
    built = [
        r if isinstance(r, EvalRetriever) else build_retriever(r, seed=seed, load_embedder=load) for r in retrievers
    ]
    labels = [r.name for r in built]
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise UserError(f"retriever {duplicates[0]!r} given twice", hint="label them apart: --retriever LABEL=SPEC")
    if baselines is not None:
        check_baselines(baselines, labels)
        blind = next((r.name for r in built if r.name in baselines and not r.retrieves), None)
        # a retriever that retrieves nothing ("none": the LLM alone) has per-query values only for the LLM's metric
        llm_paired = run_downstream and evaluator.supports_no_retrieval and bool(evaluator.per_record_metrics)
        if blind is not None and not llm_paired:
            raise UserError(
                f"baseline {blind!r} retrieves nothing, so it has no per-query retrieval metrics to compare with",
                hint="choose a retriever that retrieves, or compare on an LLM metric (qa, icl) with the LLM on",
            )
    for retriever in built:
        retriever.prepare(spec)

    depth = retrieval_depth(spec.evaluation.metrics, evaluator.top_k)
    results: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    details: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, RetrievalOutcome] = {}
    # Retrieval first, for every retriever: it is cheap next to the LLM and fails fast on a bad combination.
    for retriever in built:
        t0 = time.perf_counter()
        _log(show_progress, f"[eval {spec.name}] {retriever.name}: retrieving for {len(records)} records")
        outcome = retrieve(
            records, retriever, task=spec.name, corpus=corpus, depth=depth, candidates_only=candidates_only
        )
        outcomes[retriever.name] = outcome
        if retriever.retrieves:
            results[retriever.name], per_query[retriever.name] = retrieval_metrics(outcome, spec.evaluation.metrics)
        else:
            results[retriever.name] = {}
        details[retriever.name] = {
            "pool": outcome.pool,
            "judged_records": len(outcome.qrels),
            "retrieval_seconds": round(time.perf_counter() - t0, 2),
        }

    language_model = None
    if run_downstream:
        lm_ids = record_query_ids(records)[: len(lm_records)]
        language_model = load_language_model(lm, dtype=lm_dtype, device=device)
        for retriever in built:
            if not (retriever.retrieves or evaluator.supports_no_retrieval):
                continue
            t0 = time.perf_counter()
            _log(
                show_progress,
                f"[eval {spec.name}] {retriever.name}: {evaluator.name} evaluation with {language_model.name}",
            )
            keys = outcomes[retriever.name].keys[:downstream_limit]
            scores = evaluator.score_records(lm_records, keys, language_model)
            results[retriever.name] = {**scores.metrics, **results[retriever.name]}
            # the LLM's per-record values, under the query ids of the retrieval metrics, for the paired comparisons
            # (a value that is not finite is left unpaired, as an unjudged query: JSON and the tests need numbers)
            for metric, record_values in scores.per_record.items():
                per_query.setdefault(retriever.name, {})[metric] = {
                    qid: value for qid, value in zip(lm_ids, record_values, strict=True) if math.isfinite(value)
                }
            details[retriever.name]["downstream_seconds"] = round(time.perf_counter() - t0, 2)

    computed = {name for metrics in results.values() for name in metrics}
    order = [m for m in (*(evaluator.metrics if run_downstream else ()), *spec.evaluation.metrics) if m in computed]
    main = next((m for m in order if m in evaluator.metrics), spec.evaluation.main_metric)
    main = main if main in computed else (order[0] if order else None)
    # paired on the main metric where it has per-query values (the LLM's metric when it is a mean over records),
    # else on the LLM's per-record stand-in for it (log-perplexity for perplexity), else on the task's main
    # retrieval metric
    with_values = {m for values in per_query.values() for m in values}
    llm_values = sorted(evaluator.per_record_metrics) if run_downstream else []
    paired_metric = next(
        (m for m in (main, *llm_values, spec.evaluation.main_metric, *spec.evaluation.metrics) if m in with_values),
        None,
    )
    paired_on = None
    if paired_metric is not None:
        paired_on = pairing_label(
            paired_metric,
            main=main,
            llm_metric=paired_metric in llm_values,
            lower_is_better=paired_metric in evaluator.lower_is_better,
        )
    values = {name: per_query[name][paired_metric] for name in labels if paired_metric in per_query.get(name, {})}
    used_baselines = [b for b in (DEFAULT_BASELINES if baselines is None else baselines) if b in values]
    return {
        "format": RESULTS_FORMAT,
        "task": spec.name,
        "downstream": evaluator.name if run_downstream else None,
        "downstream_skipped": skipped,
        "data": data_name,
        "corpus": corpus_name,
        "pool": "corpus" if corpus is not None and not candidates_only else "candidates",
        "lm": language_model.name if language_model is not None else None,
        "n_records": len(records),
        "top_k": evaluator.top_k,
        "max_prompt_tokens": settings.max_prompt_tokens,
        "limit": limit,
        "n_downstream_records": len(lm_records) if run_downstream else 0,
        "sample": sample,
        "seed": seed,
        "retrievers": labels,
        "metrics": order,
        "main_metric": main,
        "lower_is_better": sorted(m for m in order if m in evaluator.lower_is_better),
        "results": {name: {m: _clean(v) for m, v in metrics.items()} for name, metrics in results.items()},
        "paired_metric": paired_metric,
        "paired_on": paired_on,
        "baselines": used_baselines,
        "paired": compare_to_baselines(values, used_baselines, seed=seed),
        "details": details,
        "seconds": round(time.perf_counter() - started, 2),
        "per_query": per_query,
    }


def _clean(value: float) -> float | None:
    """JSON has no NaN/inf: an undefined metric becomes null (shown as '-')."""
    return float(value) if math.isfinite(value) else None
