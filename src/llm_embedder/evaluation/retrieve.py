"""The retrieval step of an evaluation: what each record gets retrieved, plus the run and qrels to score it.

Two pools: with a corpus (and not ``candidates_only``) keys come from the corpus and relevance from ``pos_index``
(or corpus rows whose key equals a ``pos`` text); otherwise each record's own candidates are ranked (``history``
for chat, else ``pos`` + ``neg``) and relevance is the teacher's best candidate when ``teacher_scores`` exist,
else the positives (chat and lrlm records have none, so they are judged only once scored). The run/qrels
conventions are those of :mod:`llm_embedder.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import RetrievedKey
from llm_embedder.evaluation.metrics import (
    candidate_qrels,
    corpus_qrels,
    record_query_ids,
    run_from_rankings,
    run_from_result,
)
from llm_embedder.evaluation.retrievers import EvalRetriever

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


@dataclass
class RetrievalOutcome:
    """Per record the retrieved keys (most relevant first), and the run/qrels for retrieval metrics."""

    keys: list[list[RetrievedKey]]
    run: Run = field(default_factory=dict)
    qrels: Qrels = field(default_factory=dict)
    #: "corpus" or "candidates"
    pool: str = "candidates"


def retrieve(
    records: Sequence[Record],
    retriever: EvalRetriever,
    *,
    task: str,
    corpus: Corpus | None = None,
    depth: int = 10,
    candidates_only: bool = False,
) -> RetrievalOutcome:
    """Run ``retriever`` for every record: up to ``depth`` corpus keys, or the full ranking of its candidates."""
    qids = record_query_ids(records)
    queries = [r.query for r in records]
    if corpus is not None and not candidates_only:
        qrels = corpus_qrels(records, qids, corpus_keys=corpus.keys)
        if not retriever.retrieves:
            return RetrievalOutcome([[] for _ in records], {}, qrels, "corpus")
        result = retriever.search_corpus(queries, corpus.keys, min(depth, len(corpus)), task=task)
        keys = [[RetrievedKey(corpus.keys[row], row) for row, _ in result.hits(i)] for i in range(len(records))]
        return RetrievalOutcome(keys, run_from_result(result, qids), qrels, "corpus")
    qrels = candidate_qrels(records, qids)
    if not retriever.retrieves:
        return RetrievalOutcome([[] for _ in records], {}, qrels, "candidates")
    candidates = [r.candidates for r in records]
    rankings = retriever.rank_candidates(queries, candidates, task=task)
    keys = [[RetrievedKey(c[j], j) for j in ranking] for c, ranking in zip(candidates, rankings, strict=True)]
    return RetrievalOutcome(keys, run_from_rankings(rankings, qids), qrels, "candidates")
