"""Records (training / dev examples) and corpora: reading, validating, writing."""

from llm_embedder.data.corpus import Corpus, iter_corpus_rows
from llm_embedder.data.jsonl import iter_jsonl, write_jsonl
from llm_embedder.data.records import Record, load_records, read_records, write_records

__all__ = [
    "Corpus",
    "Record",
    "iter_corpus_rows",
    "iter_jsonl",
    "load_records",
    "read_records",
    "write_jsonl",
    "write_records",
]
