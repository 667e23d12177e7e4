"""Information-retrieval metrics (nDCG, recall, precision, MAP, MRR, hit rate) computed with pytrec_eval.

The core (:func:`compute_metrics`, :func:`per_query_metrics`) knows nothing about records or corpora: it takes a
TREC-style ``run`` (query id -> doc id -> score) and ``qrels`` (query id -> doc id -> graded relevance) and
metric names such as ``"ndcg@10"``. Adapters at the end turn records and search results into runs and qrels.

Conventions, so numbers are reproducible and comparable:

- The mean is over the queries of ``qrels`` that have at least one relevant document; a query missing from the
  run (or with an empty run) counts as 0. Queries with no relevant document are skipped (every metric would be 0
  or undefined for them).
- Ties: trec_eval orders equal scores by document id, which depends on id spelling. We fix the order ourselves:
  each query's documents are sorted by score descending, then doc id ascending (Python string order), and the
  scores are replaced by strictly decreasing numbers before pytrec_eval sees them. Runs made by
  :func:`run_from_result` already carry strictly decreasing scores, so their order is the retriever's order.
- ``mrr@k`` and ``hit@k``: trec_eval's ``recip_rank`` has no cutoff, so the run is truncated to its top k per
  query first. ``ndcg@k`` = ``ndcg_cut.k`` (linear gain = relevance grade, log2 discount), ``recall@k`` =
  ``recall.k``, ``precision@k`` = ``P.k``, ``map@k`` = ``map_cut.k``; ``ndcg``, ``map`` and ``mrr`` without a
  cutoff use the whole run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_embedder.errors import DataError, UserError

if TYPE_CHECKING:
    from llm_embedder.data.records import Record
    from llm_embedder.retrieval.base import SearchResult

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

_ALIASES = {
    "ndcg": "ndcg",
    "recall": "recall",
    "r": "recall",
    "precision": "precision",
    "p": "precision",
    "map": "map",
    "mrr": "mrr",
    "rr": "mrr",
    "recip_rank": "mrr",
    "hit": "hit",
    "hits": "hit",
    "success": "hit",
}
_NEEDS_CUTOFF = {"recall", "precision", "hit"}
_NAME = re.compile(r"^\s*([a-z_]+)\s*(?:@\s*(\d+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name: family (ndcg, recall, precision, map, mrr, hit) and cutoff (None = whole run)."""

    family: str
    cutoff: int | None
    text: str

    @property
    def native(self) -> str | None:
        """The pytrec_eval measure (``None`` for measures computed on a truncated run)."""
        if self.family in ("mrr", "hit"):
            return None
        if self.cutoff is None:
            return {"ndcg": "ndcg", "map": "map"}[self.family]
        return {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}[self.family] + (
            f".{self.cutoff}"
        )

    @property
    def native_key(self) -> str | None:
        native = self.native
        return None if native is None else native.replace(".", "_")


def parse_metric(name: str) -> MetricName:
    """``"nDCG@10"`` -> MetricName("ndcg", 10); unknown names are a one-line error listing the known ones."""
    match = _NAME.match(str(name))
    family = _ALIASES.get(match.group(1).lower()) if match else None
    if match is None or family is None:
        raise UserError(
            f"unknown metric {name!r}",
            hint="use ndcg@K, recall@K, precision@K, map@K, mrr@K or hit@K (ndcg, map, mrr also without @K)",
        )
    cutoff = int(match.group(2)) if match.group(2) else None
    if cutoff is not None and cutoff <= 0:
        raise UserError(f"metric {name!r}: the cutoff must be positive")
    if cutoff is None and family in _NEEDS_CUTOFF:
        raise UserError(f"metric {name!r} needs a cutoff", hint=f"e.g. {family}@10")
    return MetricName(family, cutoff, str(name))


def _ranked(docs: Mapping[str, float]) -> list[str]:
    """Doc ids by score descending, then doc id ascending (NaN scores last)."""

    def key(item: tuple[str, float]) -> tuple[float, str]:
        score = float(item[1])
        return (math.inf if math.isnan(score) else -score, item[0])

    return [doc for doc, _ in sorted(((str(d), s) for d, s in docs.items()), key=key)]


def _as_run(ranked: Mapping[str, list[str]]) -> Run:
    """Strictly decreasing scores that encode the given order (pytrec_eval re-sorts by score)."""
    return {q: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for q, docs in ranked.items() if docs}


def _judged(qrels: Mapping[str, Mapping[str, int]]) -> Qrels:
    out: Qrels = {}
    for qid, docs in qrels.items():
        grades = {str(d): int(r) for d, r in docs.items()}
        if any(r > 0 for r in grades.values()):
            out[str(qid)] = grades
    return out


def per_query_metrics(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{query_id: {metric: value}}`` for every judged query of ``qrels`` (missing from the run -> 0)."""
    import pytrec_eval

    names = [parse_metric(m) for m in metrics]
    judged = _judged(qrels)
    runs = {str(qid): docs for qid, docs in run.items()}
    ranked = {qid: _ranked(runs.get(qid, {}) or {}) for qid in judged}
    out = {qid: {m.text: 0.0 for m in names} for qid in judged}
    if not judged or not names:
        return out

    native = {m.native for m in names if m.native}
    if native:
        evaluated = pytrec_eval.RelevanceEvaluator(judged, native).evaluate(_as_run(ranked))
        for qid, values in evaluated.items():
            for m in names:
                if m.native_key is not None:
                    out[qid][m.text] = float(values.get(m.native_key, 0.0))

    cutoffs = {m.cutoff for m in names if m.native is None}
    for cutoff in cutoffs:
        truncated = {qid: docs[:cutoff] if cutoff else docs for qid, docs in ranked.items()}
        evaluated = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_as_run(truncated))
        for qid, values in evaluated.items():
            rr = float(values.get("recip_rank", 0.0))
            for m in names:
                if m.native is None and m.cutoff == cutoff:
                    out[qid][m.text] = rr if m.family == "mrr" else float(rr > 0)
    return out


def compute_metrics(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str]
) -> dict[str, float]:
    """Mean of each metric over the judged queries of ``qrels`` (see the module docstring for the conventions)."""
    return mean_metrics(per_query_metrics(run, qrels, metrics).values())


def mean_metrics(per_query: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average per-query metric dicts (all with the same keys): the numbers :func:`compute_metrics` reports."""
    rows = list(per_query)
    if not rows:
        raise UserError("no query has a relevant document, so retrieval metrics are undefined")
    return {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]}


# ---------------------------------------------------------------------------------------------------- adapters
def run_from_result(
    result: SearchResult, query_ids: Sequence[str], doc_ids: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """A run from a :class:`SearchResult`: hit order kept (strictly decreasing scores), padding dropped.

    ``doc_ids[row]`` names corpus row ``row`` (default ``str(row)``); a row repeated in a result keeps its first rank.
    """
    if len(query_ids) != result.ids.shape[0]:
        raise UserError(f"{len(query_ids)} query ids for {result.ids.shape[0]} result rows")
    run: Run = {}
    for i, qid in enumerate(query_ids):
        docs: dict[str, float] = {}
        hits = result.hits(i)
        for rank, (row, _) in enumerate(hits):
            doc = str(row) if doc_ids is None else str(doc_ids[row])
            docs.setdefault(doc, float(len(hits) - rank))
        run[str(qid)] = docs
    return run


def run_from_rankings(rankings: Sequence[Sequence[int]], query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """A run from per-record candidate rankings (positions best first), doc id = ``str(position)``."""
    if len(rankings) != len(query_ids):
        raise UserError(f"{len(query_ids)} query ids for {len(rankings)} rankings")
    return {
        str(qid): {str(pos): float(len(order) - rank) for rank, pos in enumerate(order)}
        for qid, order in zip(query_ids, rankings, strict=True)
    }


def record_query_ids(records: Sequence[Record]) -> list[str]:
    """A unique string id per record: its ``query_id`` (or ``qid``), else its position; duplicates get ``#n``."""
    seen: dict[str, int] = {}
    out = []
    for i, record in enumerate(records):
        base = str(record.id) if record.id is not None else str(i)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.append(base if count == 0 else f"{base}#{count}")
    return out


def corpus_qrels(
    records: Sequence[Record], query_ids: Sequence[str], *, corpus_keys: Sequence[str] | None = None
) -> dict[str, dict[str, int]]:
    """Qrels for retrieval from a corpus: relevant rows = ``pos_index``, or the rows whose key equals a ``pos`` text.

    Doc ids are corpus rows as strings (as in :func:`run_from_result`). Records without positives are left out.
    The grade of a ``pos_index`` row is its ``pos_grades`` entry when the record has one (graded qrels, so nDCG is
    graded as in BEIR/TREC), else 1; positives found by text are grade 1.
    """
    lookup: dict[str, list[int]] | None = None
    qrels: Qrels = {}
    for record, qid in zip(records, query_ids, strict=True):
        rows: list[int] = []
        grades: list[int] | None = None
        if record.pos_index:
            rows = list(record.pos_index)
            grades = record.pos_grades
            if corpus_keys is not None:
                _check_rows(record, rows, len(corpus_keys))
        elif record.pos and corpus_keys is not None:
            if lookup is None:
                lookup = {}
                for row, key in enumerate(corpus_keys):
                    lookup.setdefault(key.strip(), []).append(row)
            for text in record.pos:
                rows.extend(lookup.get(text.strip(), []))
        if rows:
            judged: dict[str, int] = {}
            for row, grade in zip(rows, grades or [1] * len(rows), strict=True):
                judged[str(row)] = max(judged.get(str(row), 0), grade)  # a row listed twice keeps its best grade
            qrels[str(qid)] = judged
    return qrels


def _check_rows(record: Record, rows: Sequence[int], corpus_size: int) -> None:
    """A ``pos_index`` row outside the corpus would count as a silent miss: it is bad data, said in one line."""
    bad = next((row for row in rows if not 0 <= row < corpus_size), None)
    if bad is None:
        return
    path, _, line = (record.source or "<records>").rpartition(":")
    path, lineno = (path, int(line)) if line.isdigit() else (record.source or "<records>", None)
    raise DataError(
        path,
        lineno,
        f"row {bad} is outside the corpus ({corpus_size} rows, numbered from 0)",
        field="pos_index",
        hint="give the corpus these records were made for, or fix their pos_index",
    )


def candidate_qrels(records: Sequence[Record], query_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Qrels for ranking each record's own candidates (``pos`` + ``neg``, or chat ``history``).

    The relevant candidate is the argmax of ``teacher_scores`` (the first one on ties: the LLM's preferred
    memory turn / chunk / example); without teacher scores, the ``pos`` candidates. Doc id = candidate position.
    Records with neither are left out.
    """
    qrels: Qrels = {}
    for record, qid in zip(records, query_ids, strict=True):
        scores = record.teacher_scores
        if scores:
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            qrels[str(qid)] = {str(best): 1}
        elif record.num_pos > 0:
            qrels[str(qid)] = {str(i): 1 for i in range(record.num_pos)}
    return qrels
