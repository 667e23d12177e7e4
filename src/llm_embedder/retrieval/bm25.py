"""BM25 retrieval on bm25s: pure Python + numpy, no Java/Anserini (the reference needs both).

Text is lower-cased, split on word characters, English stop words are removed and words are stemmed with the
Snowball English stemmer (PyStemmer); scoring is Lucene's BM25 (k1 = 1.5, b = 0.75 by default). Results are
deterministic: equal scores are ordered by corpus row, and documents sharing no term with the query are never
returned (a zero BM25 score carries no evidence).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import SearchResult
from llm_embedder.retrieval.folder import atomic_folder, read_manifest, write_manifest
from llm_embedder.retrieval.ranking import pad_result, top_k_desc

BM25_FOLDER = "bm25"


def _bm25s() -> Any:
    import bm25s

    # bm25s logs a line per load/index at INFO level; our progress reporting is enough
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class _Analyzer:
    """Tokenisation shared by documents and queries (they must match exactly)."""

    def __init__(self, stemmer: str | None, stopwords: str | None) -> None:
        self.stemmer_name = stemmer
        self.stopwords = stopwords
        self._stemmer: Any = None
        if stemmer:
            import Stemmer

            try:
                self._stemmer = Stemmer.Stemmer(stemmer)
            except KeyError:
                raise UserError(
                    f"unknown stemmer {stemmer!r}", hint=f"choose one of {', '.join(Stemmer.algorithms())} or none"
                ) from None

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        bm25s = _bm25s()
        return bm25s.tokenize(
            list(texts),
            stopwords=self.stopwords or [],
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )

    def tokenized(self, texts: Sequence[str], show_progress: bool) -> Any:
        bm25s = _bm25s()
        return bm25s.tokenize(
            list(texts),
            stopwords=self.stopwords or [],
            stemmer=self._stemmer,
            return_ids=True,
            show_progress=show_progress,
        )


class BM25Retriever:
    """Sparse lexical retrieval over ``keys`` (the rendered corpus rows); ``search`` returns corpus rows.

    Args:
        keys: the texts to index; row ``i`` of the results is ``keys[i]``.
        name: label in reports.
        k1, b: BM25 saturation and length normalisation.
        stemmer: a Snowball stemmer name (``"english"``) or ``None`` for no stemming.
        stopwords: ``"en"`` for bm25s' English list, or ``None``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        *,
        name: str = "bm25",
        k1: float = 1.5,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        show_progress: bool = False,
    ) -> None:
        self.name = name
        self.k1 = float(k1)
        self.b = float(b)
        self.analyzer = _Analyzer(stemmer, stopwords)
        self.model: Any = None
        self.num_docs = len(keys)
        if len(keys) == 0:
            raise UserError("cannot build a BM25 index over an empty corpus")
        bm25s = _bm25s()
        self.model = bm25s.BM25(k1=self.k1, b=self.b)
        self.model.index(self.analyzer.tokenized(keys, show_progress), show_progress=show_progress)

    # -------------------------------------------------------------- scoring
    def _query_ids(self, tokens: list[str]) -> list[int]:
        vocab = self.model.vocab_dict
        return [vocab[t] for t in tokens if t in vocab and t != ""]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every indexed key for one query (float32, length = number of keys)."""
        ids = self._query_ids(self.analyzer.tokens([query])[0])
        if not ids:
            return np.zeros(self.num_docs, dtype=np.float32)
        return np.asarray(self.model.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult:
        """Top-k rows per query by BM25 score (rows sharing no term with the query are left out, id -1)."""
        if isinstance(queries, str):
            queries = [queries]
        k = int(k)
        if k <= 0:
            raise UserError(f"k must be positive, got {k}")
        from tqdm.auto import tqdm

        rows: list[list[int]] = []
        values: list[list[float]] = []
        token_lists = self.analyzer.tokens(list(queries))
        for tokens in tqdm(token_lists, desc="bm25", unit="q", disable=len(token_lists) < 2000):
            ids = self._query_ids(tokens)
            if not ids:
                rows.append([])
                values.append([])
                continue
            scores = np.asarray(self.model.get_scores_from_ids(ids), dtype=np.float32)
            top = top_k_desc(scores, k)
            top = top[scores[top] > 0]
            rows.append(top.tolist())
            values.append(scores[top].tolist())
        return pad_result(rows, values, k)

    # -------------------------------------------------------------- persistence
    def manifest_section(self) -> dict[str, Any]:
        return {
            "folder": BM25_FOLDER,
            "name": self.name,
            "count": self.num_docs,
            "k1": self.k1,
            "b": self.b,
            "method": "lucene",
            "stemmer": self.analyzer.stemmer_name,
            "stopwords": self.analyzer.stopwords,
        }

    def write_files(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Write the bm25s files under ``folder/bm25`` (no manifest); returns the manifest section."""
        self.model.save(str(Path(folder) / BM25_FOLDER), show_progress=False)
        return self.manifest_section()

    def save(self, folder: str | os.PathLike[str], *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Atomically write an index folder holding this BM25 index."""
        with atomic_folder(folder) as tmp:
            section = self.write_files(tmp)
            return write_manifest(tmp, {"count": self.num_docs, **(meta or {}), "bm25": section})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = True, verify: bool = False) -> BM25Retriever:
        """Open the BM25 index of an index folder (``llm-embedder index --bm25`` or :meth:`save`)."""
        folder = Path(folder)
        manifest = read_manifest(folder, verify=verify)
        section = manifest.get("bm25")
        if not section:
            raise UserError(f"{folder} holds no BM25 index", hint="rebuild it with `llm-embedder index --bm25`")
        self = cls.__new__(cls)
        self.name = str(section.get("name", "bm25"))
        self.k1 = float(section.get("k1", 1.5))
        self.b = float(section.get("b", 0.75))
        self.analyzer = _Analyzer(section.get("stemmer"), section.get("stopwords"))
        self.num_docs = int(section["count"])
        bm25s = _bm25s()
        self.model = bm25s.BM25.load(str(folder / section.get("folder", BM25_FOLDER)), mmap=mmap, show_progress=False)
        return self

    def __repr__(self) -> str:
        return f"BM25Retriever(name={self.name!r}, docs={self.num_docs}, k1={self.k1}, b={self.b})"


def rank_candidates_bm25(
    query: str, candidates: Sequence[str], *, stemmer: str | None = "english", stopwords: str | None = "en"
) -> list[int]:
    """Positions of ``candidates`` ordered by BM25 against ``query``, best first (all of them).

    For per-record candidate lists (chat history, earlier lrlm chunks): the statistics (idf, average length)
    come from the candidates themselves. Ties (including candidates sharing no term) keep their original order.
    """
    if not candidates:
        return []
    analyzer = _Analyzer(stemmer, stopwords)
    doc_tokens = analyzer.tokens(list(candidates))
    query_tokens = set(analyzer.tokens([query])[0])
    if not query_tokens or not any(query_tokens.intersection(d) for d in doc_tokens):
        return list(range(len(candidates)))
    retriever = BM25Retriever(list(candidates), stemmer=stemmer, stopwords=stopwords)
    return top_k_desc(retriever.scores(query), len(candidates)).tolist()
