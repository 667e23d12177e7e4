"""The loop: live augments + answers -> exported records -> `llm-embedder score` -> `llm-embedder train`."""

from __future__ import annotations

import json

from llm_embedder.cli.main import main
from llm_embedder.data.records import load_records
from llm_embedder.serving.feedback import FeedbackLog
from llm_embedder.serving.service import RetrievalService

FACTS = [
    ("Paris", "Paris is the capital of France."),
    ("Berlin", "Berlin is the capital of Germany."),
    ("Rome", "Rome is the capital of Italy."),
    ("Madrid", "Madrid is the capital of Spain."),
    ("Vienna", "Vienna is the capital of Austria."),
    ("Oslo", "Oslo is the capital of Norway."),
]


def test_exported_feedback_is_scored_and_trained_on(make_service, prompt_tokenizer, tmp_path):
    from lm_helpers import make_tiny_lm
    from train_helpers import build_tiny_model

    data = tmp_path / "data"
    service = make_service(data)
    service.create_collection("kb", "qa")
    service.upsert("kb", [{"id": city, "text": text} for city, text in FACTS])
    for i, (city, text) in enumerate(FACTS):
        country = text.split()[-1].rstrip(".")
        service.add_turns(
            "c1", [{"role": "user", "content": f"Tell me about {country}."}, {"role": "assistant", "content": text}]
        )
        result = service.augment(
            f"What is the capital of {country}?",
            conversation_id="c1",
            sources=[{"collection": "kb", "top_k": 1}, {"memory": "conversation", "top_k": 1}],
        )
        if i < 5:  # the last one gets no answer: it is not a record
            service.feedback(result["augment_id"], city)
    service.close()

    exported = tmp_path / "kb.feedback.jsonl"
    assert main(["serve-feedback", "--data-dir", str(data), "kb", "-o", str(exported)]) == 0
    records = load_records(exported)
    assert len(records) == 5
    assert all(len(r.candidates) == len(FACTS) and r.pos == [] for r in records)  # all candidates, not just the top 1
    assert [r.answers for r in records] == [[city] for city, _ in FACTS[:5]]
    chat = tmp_path / "chat.feedback.jsonl"
    assert main(["serve-feedback", "--data-dir", str(data), "conversation_memory", "-o", str(chat)]) == 0
    # the memory so far; the first augment had one memory item only: no ranking to learn, not exported
    assert [len(r.history or []) for r in load_records(chat)] == [2, 3, 4, 5]

    lm = tmp_path / "tiny-lm"
    make_tiny_lm(lm)
    scored = tmp_path / "kb.scored.jsonl"
    assert main(["score", str(exported), "-o", str(scored), "--lm", str(lm), "--no-progress", "--device", "cpu"]) == 0
    scored_records = load_records(scored)
    assert [len(r.teacher_scores or []) for r in scored_records] == [len(FACTS)] * 5
    chat_scored = tmp_path / "chat.scored.jsonl"
    assert main(["score", str(chat), "-o", str(chat_scored), "--lm", str(lm), "--no-progress", "--device", "cpu"]) == 0

    model = build_tiny_model(tmp_path / "tiny-encoder")
    out = tmp_path / "tuned"
    args = ["train", "--model", model, "--data", f"qa={scored}", "--data", f"chat={chat_scored}", "-o", str(out)]
    args += ["--steps", "2", "--batch-size", "2", "--group-size", "2", "--device", "cpu", "--num-workers", "0"]
    args += ["--query-max-length", "48", "--key-max-length", "48"]
    assert main(args) == 0
    assert json.loads((out / "training_summary.json").read_text())["metrics"]["steps"] == 2

    # and serve the tuned model over the same knowledge base and memory: re-encoded in place
    from llm_embedder import LLMEmbedder
    from llm_embedder.retrieval.store import open_store

    assert main(["reindex", "--data-dir", str(data), "--model", str(out), "--backend", "torch", "--device", "cpu"]) == 0
    tuned = LLMEmbedder(str(out), device="cpu")
    service = RetrievalService(tuned, open_store(str(data / "store")), data, prompt_tokenizer=lambda: prompt_tokenizer)
    try:
        assert {c["name"]: c["count"] for c in service.list_collections()} == {"kb": len(FACTS)}
        assert {c["encoder"] for c in service.list_collections()} == {tuned.fingerprint}
        assert len(service.search("kb", "capital of France", top_k=3)) == 3
        result = service.augment("capital?", conversation_id="c1", sources=[{"memory": "conversation", "top_k": 2}])
        assert result["augment_id"] and len(result["hits"]) == 2
    finally:
        service.close()
    assert main(["reindex", "--data-dir", str(data), "--model", str(out), "--backend", "torch", "--device", "cpu"]) == 0


def test_a_torn_last_line_is_skipped_and_the_next_entry_starts_fresh(tmp_path):
    log = FeedbackLog(tmp_path)
    candidates = [{"id": "a", "text": "A", "score": 1.0}, {"id": "b", "text": "B", "score": 0.5}]
    entry = {"query": "q", "task": "qa", "candidates": candidates, "in_prompt": ["a"]}
    log.record_augment("one", {"kb": entry})
    with open(tmp_path / "kb.augments.jsonl", "ab") as handle:
        handle.write(b'{"augment_id": "two", "query": "cut by a kill -')  # what a kill -9 mid-write leaves
    log = FeedbackLog(tmp_path)  # a restart
    assert not log.knows("two")
    log.record_augment("three", {"kb": entry})
    log.record_answer("one", "x")
    log.record_answer("three", "y")
    assert [(r["query_id"], r["answers"]) for r in log.records("kb")] == [("one", ["x"]), ("three", ["y"])]
    assert log.counts("kb") == (2, 2)


def test_feedback_entries_are_in_the_record_format(tmp_path):
    log = FeedbackLog(tmp_path)
    entry = {
        "query": "q",
        "task": "chat",
        "history_task": True,
        "candidates": [
            {"id": "0", "text": "Speaker 1: a\nSpeaker 2: b", "score": 0.5},
            {"id": "1", "text": "Speaker 1: c", "score": 0.1},
        ],
        "in_prompt": ["0"],
    }
    log.record_augment("id1", {"conversation_memory": entry})
    log.record_answer("id1", "answer")
    assert list(log.records("conversation_memory")) == [
        {
            "query": "q",
            "history": ["Speaker 1: a\nSpeaker 2: b", "Speaker 1: c"],
            "answers": ["answer"],
            "task": "chat",
            "query_id": "id1",
            "candidate_ids": ["0", "1"],
            "in_prompt": ["0"],
            "collection": "conversation_memory",
        }
    ]


def test_startup_reads_the_same_ids_as_parsing_every_line(tmp_path):
    """The ids rebuilt at start-up (read from each line's start) are those of the parsed lines: uuid hex ids, ids of
    another shape, a line that is not an augment, and a torn last line."""
    import uuid

    from llm_embedder.serving.feedback import _logged_augment_ids, _read_lines

    log = FeedbackLog(tmp_path)
    entry = {"query": 'q "quoted" ,', "task": "qa", "candidates": [], "in_prompt": []}
    ids = [uuid.uuid4().hex for _ in range(5)] + ["not-hex", "A" * 32, uuid.uuid4().hex.upper()]
    for augment_id in ids:
        log.record_augment(augment_id, {"kb": entry})
    path = tmp_path / "kb.augments.jsonl"
    with open(path, "ab") as handle:
        handle.write(b'{"other": 1}\n{"augment_id": "' + uuid.uuid4().hex.encode() + b'", "query": "cut')
    fast = list(_logged_augment_ids(path))
    assert fast == [str(e.get("augment_id")) for e in _read_lines(path)] == [*ids, "None"]
    restarted = FeedbackLog(tmp_path)
    assert all(restarted.knows(i) for i in ids) and len(restarted._augments) == len(ids) + 1


def test_candidates_export_as_their_keys_and_older_logs_as_their_text(tmp_path):
    """The service logs a candidate's key (what was encoded and shown); a log written before it kept ``text``."""
    log = FeedbackLog(tmp_path)
    keyed = [
        {"id": "p", "key": "Paris Paris is in France.", "score": 0.9},
        {"id": "b", "key": "Banana x", "score": 0.1},
    ]
    older = [{"id": "p", "text": "Paris is in France.", "score": 0.9}, {"id": "b", "text": "x", "score": 0.1}]
    for augment_id, candidates in (("new", keyed), ("old", older)):
        log.record_augment(augment_id, {"kb": {"query": "q", "task": "qa", "candidates": candidates, "in_prompt": []}})
        log.record_answer(augment_id, "a")
    assert [r["neg"] for r in log.records("kb")] == [
        ["Paris Paris is in France.", "Banana x"],
        ["Paris is in France.", "x"],
    ]


def test_augment_ids_are_kept_compactly_and_exactly(monkeypatch):
    """Membership is exact across merges, for ids sharing their first half, and for ids that are not uuid hex."""
    import uuid

    from llm_embedder.serving.feedback import AugmentIds

    monkeypatch.setattr(AugmentIds, "MERGE_EVERY", 8)
    ids = AugmentIds()
    issued = [uuid.uuid4().hex for _ in range(100)]
    twins = [issued[0][:16] + f"{i:016x}" for i in range(5)]  # same high half as an issued id
    odd = ["one", issued[1].upper(), "0x" + issued[2][2:], "é" * 32]
    for augment_id in issued + twins[:3] + odd:
        ids.add(augment_id)
    assert len(ids) == 100 + 3 + len(odd)
    assert all(augment_id in ids for augment_id in issued + twins[:3] + odd)
    assert not any(augment_id in ids for augment_id in twins[3:])
    assert not any(uuid.uuid4().hex in ids for _ in range(200))
    assert issued[1].upper() in ids and issued[3].upper() not in ids and 5 not in ids
