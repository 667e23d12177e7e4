"""``llm-embedder build negatives``: mine hard negatives for records from a corpus.

For each record the retriever (``bm25``, an encoder such as ``default`` / a model folder / a hub id, or an index
folder made by ``llm-embedder index``) searches the corpus with the record's query; the top hits that are not
positives become ``neg`` / ``neg_index`` (replacing the old ones). Positives are the rows of ``pos_index`` and
every row whose key equals a ``pos`` text, so a duplicated gold passage is never mined as a negative.
``--exclude-answers`` also skips passages containing one of the record's normalised ``answers`` (likely false
negatives, as in the reference's NQ data); ``--skip-top N`` skips the N best remaining hits, another guard
against unlabelled positives. Teacher scores no longer match the new candidates and are dropped.
"""

from __future__ import annotations

import argparse
import re
import string
from typing import Any

from llm_embedder.data.corpus import Corpus
from llm_embedder.data.records import Record, load_records, write_records
from llm_embedder.errors import UserError
from llm_embedder.retrieval.base import Retriever
from llm_embedder.tasks.registry import add_tasks_file_argument, load_tasks_file

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces (the SQuAD/NQ answer normalisation)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def positive_rows(record: Record, lookup: dict[str, list[int]]) -> set[int]:
    rows = set(record.pos_index or [])
    for text in record.pos:
        rows.update(lookup.get(text.strip(), []))
    return rows


def mine_negatives(
    records: list[Record],
    corpus: Corpus,
    retriever: Retriever,
    *,
    k: int = 20,
    skip_top: int = 0,
    exclude_answers: bool = False,
    batch: int = 256,
) -> list[Record]:
    """Return the records with ``neg``/``neg_index`` replaced by the top-k non-positive hits."""
    from tqdm.auto import tqdm

    if k <= 0:
        raise UserError(f"-k must be positive, got {k}")
    lookup: dict[str, list[int]] = {}
    for row, key in enumerate(corpus.keys):
        lookup.setdefault(key.strip(), []).append(row)
    normalized: dict[int, str] = {}

    def select(record: Record, hits: list[tuple[int, float]]) -> list[int]:
        positives = positive_rows(record, lookup)
        pos_texts = {t.strip() for t in record.pos}
        answers = [a for a in (normalize_answer(x) for x in record.answers or []) if a]
        seen_texts: set[str] = set()
        skipped = 0
        rows: list[int] = []
        for row, _ in hits:
            key = corpus[row]
            if row in positives or key.strip() in pos_texts or key in seen_texts:
                continue
            if exclude_answers and answers:
                if row not in normalized:
                    normalized[row] = normalize_answer(key)
                if any(a in normalized[row] for a in answers):
                    continue
            seen_texts.add(key)
            if skipped < skip_top:
                skipped += 1
                continue
            rows.append(row)
            if len(rows) == k:
                break
        return rows

    out: list[Record] = []
    max_pos = max((len(positive_rows(r, lookup)) for r in records), default=0)
    depth = min(len(corpus), k + skip_top + max_pos + 20)
    with tqdm(total=len(records), desc="mining negatives", unit="rec", disable=len(records) < 500) as bar:
        for lo in range(0, len(records), batch):
            chunk = records[lo : lo + batch]
            result = retriever.search([r.query for r in chunk], depth)
            for i, record in enumerate(chunk):
                hits = result.hits(i)
                rows = select(record, hits)
                deeper = depth
                # the filters removed too many hits: search this record deeper (a full hit list may hide more)
                while len(rows) < k and deeper < len(corpus) and len(hits) == deeper:
                    deeper = min(len(corpus), deeper * 4)
                    hits = retriever.search([record.query], deeper).hits(0)
                    rows = select(record, hits)
                record.neg = [corpus[r] for r in rows]
                record.neg_index = rows
                if record.pos_index is None and record.pos:
                    found = [lookup.get(t.strip(), [None])[0] for t in record.pos]
                    if all(f is not None for f in found):
                        record.pos_index = [int(f) for f in found]  # type: ignore[arg-type]
                record.teacher_scores = None
                out.append(record)
            bar.update(len(chunk))
    return out


def make_retriever(spec: str, corpus: Corpus, task: str, args: Any) -> Retriever:
    """``bm25``, an index folder / store URI, or an encoder (``default``, a model folder or a hub id): the registry's
    names (:func:`llm_embedder.retrieval.registry.corpus_retriever`)."""
    from llm_embedder.retrieval.registry import corpus_retriever

    return corpus_retriever(spec, corpus.keys, task=task, device=args.device, batch_size=args.batch_size)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "negatives",
        help="mine hard negatives from a corpus with BM25 or an embedder (positives excluded)",
        description=__doc__,
    )
    parser.add_argument("input", metavar="IN", help="records (JSON lines)")
    parser.add_argument("-o", "--output", required=True, help="records file to write")
    parser.add_argument("--task", required=True, help="task of the records (query instruction, key template)")
    parser.add_argument("--corpus", required=True, help="corpus JSON-lines file the negatives come from")
    parser.add_argument("--key-template", default=None, help="how a corpus row becomes a key (default: the task's)")
    parser.add_argument(
        "--retriever", default="bm25", help="bm25 | an encoder (default, a model folder, a hub id) | an index folder"
    )
    parser.add_argument("-k", type=int, default=20, help="negatives per record (default 20)")
    parser.add_argument("--skip-top", type=int, default=0, help="skip the N best non-positive hits")
    parser.add_argument("--exclude-answers", action="store_true", help="skip passages that contain an answer")
    parser.add_argument("--device", default=None, help="encoder device (cpu, cuda, ...)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch size")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    from llm_embedder.tasks.registry import TASKS

    spec = TASKS.get(args.task)
    if args.skip_top < 0:
        raise UserError(f"--skip-top must be >= 0, got {args.skip_top}")
    records = load_records(args.input, task=args.task)
    corpus = Corpus.from_file(args.corpus, args.key_template or spec.key_template)
    had_scores = sum(r.teacher_scores is not None for r in records)
    retriever = make_retriever(args.retriever, corpus, args.task, args)
    mined = mine_negatives(
        records, corpus, retriever, k=args.k, skip_top=args.skip_top, exclude_answers=args.exclude_answers
    )
    count = write_records(args.output, mined)
    short = sum(len(r.neg) < args.k for r in mined)
    note = f"; {short} got fewer than {args.k}" if short else ""
    dropped = f"; dropped teacher_scores of {had_scores} records (candidates changed)" if had_scores else ""
    print(f"wrote {count} records with mined negatives to {args.output}{note}{dropped}")
    return 0
