"""The in-process service: every operation, checked against the encoder and the task table directly."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from llm_embedder.builders.lrlm import chunk_text
from llm_embedder.data.corpus import render_key
from llm_embedder.data.records import load_records
from llm_embedder.errors import UserError
from llm_embedder.model.truncation import input_overhead, keep_tail
from llm_embedder.serving.batcher import MicroBatcher
from llm_embedder.serving.errors import Conflict, NotFound, TooLarge
from llm_embedder.serving.service import serving_backend
from llm_embedder.tasks.registry import TASKS

PASSAGES = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "banana", "title": "Banana", "text": "A banana is an elongated, edible fruit."},
    {"id": "python", "title": "Python", "text": "Python is a programming language created by Guido van Rossum."},
]


def test_search_scores_are_the_task_instructed_cosines(service, serve_embedder):
    service.create_collection("kb", "qa")
    assert service.upsert("kb", PASSAGES) == ["paris", "banana", "python"]
    hits = service.search("kb", "Which city is the capital of France?", top_k=3)
    keys = serve_embedder.encode_keys([f"{p['title']} {p['text']}" for p in PASSAGES], task="qa")
    query = serve_embedder.encode_queries(["Which city is the capital of France?"], task="qa")[0]
    expected = sorted(zip(keys @ query, [p["id"] for p in PASSAGES], strict=True), reverse=True)
    assert [h["id"] for h in hits] == [i for _, i in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [s for s, _ in expected], rtol=1e-4, atol=1e-5)
    assert hits[0] == {
        "id": "paris",
        "text": PASSAGES[0]["text"],
        "title": "Paris",
        "score": pytest.approx(hits[0]["score"]),
        "metadata": {},
    }


def test_stored_keys_are_rendered_as_training_and_eval_render_them(service, serve_embedder, monkeypatch):
    """An untitled document's key is the Corpus key (template filled, then stripped), the text eval, training and
    `reindex` give the same row - not " text". (WordPiece drops the space, so the bundled encoder's vectors agree
    either way; a SentencePiece or byte-level BPE encoder's would not.)"""
    seen: list[tuple[list[str], str]] = []
    encode = serve_embedder.encode

    def spy(texts, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((list(texts), kwargs["side"]))
        return encode(texts, **kwargs)

    monkeypatch.setattr(serve_embedder, "encode", spy)
    service.create_collection("kb", "qa")
    service.upsert("kb", [{"id": "t", "text": "Paris is the capital of France."}])
    key = render_key(TASKS.get("qa").key_template, {"title": "", "text": "Paris is the capital of France."})
    assert seen == [([key], "key")]
    assert key == "Paris is the capital of France."


def test_one_service_per_data_folder(make_service, tmp_path):
    """A second service on a folder in use is refused (it would 404 the first one's feedback); close releases it."""
    first = make_service(tmp_path / "d")
    with pytest.raises(UserError, match=r"this data folder is in use by another llm-embedder process .*\(pid \d+\)"):
        make_service(tmp_path / "d")
    make_service(tmp_path / "other").close()  # another folder: fine
    first.close()
    assert not (tmp_path / "d" / "service.lock").exists()
    make_service(tmp_path / "d").create_collection("kb", "qa")
    # a service that fails while starting releases its folder at once, not when the garbage collector frees it:
    # `failed` keeps the failed start's frames alive while the next service starts on the folder
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "feedback").write_text("not a folder")
    with pytest.raises(FileExistsError) as failed:
        make_service(tmp_path / "e")
    (tmp_path / "e" / "feedback").unlink()
    make_service(tmp_path / "e").create_collection("kb", "qa")
    assert failed.value is not None


def test_collections_list_conflict_drop(service, serve_embedder):
    assert service.create_collection("kb", "qa") == {
        "name": "kb",
        "task": "qa",
        "count": 0,
        "encoder": serve_embedder.fingerprint,
        "index": "flat",
    }
    assert service.create_collection("kb", "qa")["name"] == "kb"  # same task: a no-op
    with pytest.raises(Conflict, match="collection 'kb' exists with task 'qa'"):
        service.create_collection("kb", "tool")
    service.upsert("kb", PASSAGES[:2])
    assert service.list_collections() == [
        {"name": "kb", "task": "qa", "count": 2, "encoder": serve_embedder.fingerprint, "index": "flat"}
    ]
    service.drop_collection("kb")
    assert service.list_collections() == []
    assert service.create_collection("big", "qa", index="hnsw")["index"] == "hnsw"
    with pytest.raises(Conflict, match="collection 'big' exists with task 'qa' and index 'hnsw'"):
        service.create_collection("big", "qa")
    with pytest.raises(UserError, match="unknown index 'annoy'"):
        service.create_collection("other", "qa", index="annoy")
    with pytest.raises(NotFound, match="unknown collection 'kb'"):
        service.search("kb", "x")


def test_upsert_replaces_and_delete_needs_a_selector(service):
    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    service.upsert("kb", [{"id": "paris", "text": "Lyon is a city in France.", "metadata": {"lang": "en"}}])
    hits = service.search("kb", "Lyon", top_k=3)
    assert [h["text"] for h in hits if h["id"] == "paris"] == ["Lyon is a city in France."]
    assert service.list_collections()[0]["count"] == 3
    with pytest.raises(UserError, match="nothing to delete: neither 'ids' nor 'filter' given"):
        service.delete_documents("kb")
    assert service.delete_documents("kb", filter={"lang": "en"}) == 1
    assert service.delete_documents("kb", ids=["banana"]) == 1
    assert [h["id"] for h in service.search("kb", "anything", top_k=5)] == ["python"]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: s.create_collection("../etc", "qa"), UserError, "collection '../etc' is not a valid name"),
        (lambda s: s.create_collection("a/b", "qa"), UserError, "collection 'a/b' is not a valid name"),
        (lambda s: s.create_collection("kb2", "nope"), NotFound, "unknown task 'nope'"),
        (lambda s: s.create_collection("conversation_memory", "chat"), UserError, "is reserved for memory"),
        (lambda s: s.upsert("kb", [{"text": "  "}]), UserError, "documents[0].text is empty"),
        (lambda s: s.upsert("kb", []), UserError, "documents is empty"),
        (lambda s: s.upsert("kb", [{"text": "a"}] * 5), TooLarge, "documents has 5 items, over the limit of 4"),
        (lambda s: s.upsert("kb", [{"text": 3}]), UserError, "documents[0].text must be a string, got int"),
        (lambda s: s.upsert("kb", [{"text": "x" * 101}]), TooLarge, "documents[0].text has 101 characters"),
        (lambda s: s.search("kb", ""), UserError, "query is empty"),
        (lambda s: s.search("kb", "q", top_k=0), UserError, "top_k must be an integer in 1..200, got 0"),
        (lambda s: s.search("kb", "q", mode="fuzzy"), UserError, "mode 'fuzzy' is not a search mode"),
        (lambda s: s.search("nope", "q"), NotFound, "unknown collection 'nope'"),
        (lambda s: s.add_turns("c/1", [{"role": "user", "content": "hi"}]), UserError, "conversation id 'c/1'"),
        (lambda s: s.add_turns("c1", [{"role": "bot", "content": "hi"}]), UserError, "turns[0].role is 'bot'"),
        (lambda s: s.feedback("nope", "x"), NotFound, "unknown augment_id 'nope'"),
        (lambda s: s.augment("q", sources=[{"memory": "conversation"}]), UserError, "needs 'conversation_id'"),
        (lambda s: s.augment("q", sources=[{}]), UserError, "sources[0] names no source"),
        (lambda s: s.embeddings(["a"], input_type="image"), UserError, "input_type 'image' is not known"),
        (lambda s: s.search_document("none"), NotFound, "unknown document 'none'"),
    ],
)
def test_bad_input_is_one_line(make_service, call, error, message):
    service = make_service(max_items=4, max_text_chars=100)
    service.create_collection("kb", "qa")
    with pytest.raises(error) as info:
        call(service)
    assert message in info.value.line()
    assert "\n" not in info.value.line()


def test_conversation_memory_is_stored_as_the_chat_task_was_trained(service, serve_embedder):
    turns = [
        {"role": "user", "content": "I adopted a dog named Rex."},
        {"role": "assistant", "content": "Congratulations!"},
        {"role": "user", "content": "I live in Oslo."},
    ]
    assert service.add_turns("c1", turns) == {"conversation_id": "c1", "exchanges": 2}
    # the open exchange (no reply yet) is not memory: only the first one is found
    hits = service.search_conversation("c1", "What is my dog called?", top_k=5)
    assert [h["text"] for h in hits] == ["Speaker 1: I adopted a dog named Rex.\nSpeaker 2: Congratulations!"]
    service.add_turns("c1", [{"role": "assistant", "content": "Oslo is lovely."}])
    hits = service.search_conversation("c1", "What is my dog called?", top_k=5)
    texts = [h["text"] for h in hits]
    assert sorted(texts) == [
        "Speaker 1: I adopted a dog named Rex.\nSpeaker 2: Congratulations!",
        "Speaker 1: I live in Oslo.\nSpeaker 2: Oslo is lovely.",
    ]
    keys = serve_embedder.encode_keys(texts, task="chat")
    query = serve_embedder.encode_queries(["What is my dog called?"], task="chat")[0]
    np.testing.assert_allclose([h["score"] for h in hits], keys @ query, rtol=1e-4, atol=1e-5)


def test_conversations_are_isolated_and_forgotten(service):
    service.add_turns("alice", [{"role": "user", "content": "my pin is 1234"}, {"role": "assistant", "content": "ok"}])
    assert service.search_conversation("bob", "what is my pin?") == []
    assert len(service.search_conversation("alice", "what is my pin?")) == 1
    assert service.forget_conversation("bob") == 0
    assert service.forget_conversation("alice") == 1
    assert service.search_conversation("alice", "what is my pin?") == []


def test_long_document_chunks_match_build_lrlm(service, prompt_tokenizer):
    words = [f"word{i} is followed by more text." for i in range(40)]
    text = " ".join(words)
    half = len(text) // 2
    cut = text.rindex(" ", 0, half)
    service.append_text("book", text[:cut])
    result = service.append_text("book", text[cut:])
    expected = chunk_text(prompt_tokenizer, text, 16)
    assert result == {"document_id": "book", "chunks": len(expected)}
    stored = service.documents.get([str(i) for i in range(len(expected))], scope="book")
    assert [d.text for d in stored] == expected
    # the default query is the last chunk; only earlier chunks come back
    hits = service.search_document("book", top_k=100)
    assert sorted(int(h["id"]) for h in hits) == list(range(len(expected) - 1))
    assert service.forget_document("book") == len(expected)


def test_tool_search_uses_the_left_truncated_conversation(service, serve_embedder):
    service.create_collection("tools", "tool")
    schema = {"name": "get_price", "parameters": {"type": "object", "properties": {"item": {"type": "string"}}}}
    service.upsert(
        "tools",
        [
            {"id": "price", "text": "get_price: the current price of a product", "schema": schema},
            {"id": "weather", "text": "get_weather: the forecast for a city"},
        ],
    )
    service.add_turns(
        "c1",
        [
            {"role": "user", "content": "Tell me about the iPhone 15."},
            {"role": "assistant", "content": "It is a phone."},
        ],
    )
    query = service.conversational_query("tool", "What is its price?", "c1")
    assert query == "Tell me about the iPhone 15. It is a phone. What is its price?"
    result = service.augment("What is its price?", conversation_id="c1", sources=[{"collection": "tools", "top_k": 1}])
    top = result["hits"][0]
    assert (top["id"], top["schema"], top["source"]) == ("price", schema, "tools")
    key = serve_embedder.encode_keys(["get_price: the current price of a product"], task="tool")[0]
    expected = float(key @ serve_embedder.encode_queries([query], task="tool")[0])
    assert top["score"] == pytest.approx(expected, abs=1e-5)
    # a conversation longer than the encoder's budget keeps its END (the question)
    long_history = [{"role": "user", "content": "blah " * 200}, {"role": "assistant", "content": "ok " * 200}]
    service.add_turns("c2", long_history)
    cut = service.conversational_query("tool", "What is its price?", "c2")
    tokenizer = serve_embedder.model.tokenizer
    budget = serve_embedder.max_length("query") - input_overhead(tokenizer, serve_embedder.instruction("tool", "query"))
    assert cut.endswith("What is its price?")
    joined = " ".join(["blah"] * 200 + ["ok"] * 200 + ["What is its price?"])
    assert cut == keep_tail([joined], tokenizer, budget)[0]
    assert len(cut) < len(joined)


def test_a_task_query_budget_cuts_the_conversational_query(service, serve_embedder):
    """convsearch with ``query_max_tokens``: the service's conversation + question keeps as many tokens as
    ``encode`` would, so what is logged for feedback is what was searched with."""
    service.add_turns("c3", [{"role": "user", "content": "blah " * 60}, {"role": "assistant", "content": "ok " * 60}])
    tokenizer = serve_embedder.model.tokenizer
    spec = serve_embedder.task("convsearch")
    serve_embedder.tasks.update_from_mapping({"convsearch": {"query_max_tokens": 12}}, source="test")
    try:
        cut = service.conversational_query("convsearch", "What is its price?", "c3")
    finally:
        serve_embedder.tasks.register(spec, overwrite=True)
    assert serve_embedder.task("convsearch").query_max_tokens == 48, "the built-in value is back"
    assert cut.endswith("What is its price?")
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 12


def test_augment_builds_the_prompt_and_feedback_exports_records(service, tmp_path):
    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    service.add_turns(
        "c1", [{"role": "user", "content": "I love Paris."}, {"role": "assistant", "content": "So do I."}]
    )
    result = service.augment(
        "What is the capital of France?",
        conversation_id="c1",
        sources=[{"collection": "kb", "top_k": 1}, {"memory": "conversation", "top_k": 1}],
    )
    assert result["prompt"] == (
        "Knowledge: Paris Paris is the capital and largest city of France.\n"
        "Speaker 1: I love Paris.\nSpeaker 2: So do I.\n\nQuestion: What is the capital of France?\n\nAnswer: "
    )
    assert [(h["source"], h["id"], h["in_prompt"]) for h in result["hits"]] == [
        ("kb", "paris", True),
        ("memory", "0", True),
    ]
    service.feedback(result["augment_id"], "Paris.")
    unanswered = service.augment("Who made Python?", sources=[{"collection": "kb", "top_k": 1}])
    records = service.export_feedback("kb")
    assert len(records) == 1 and unanswered["augment_id"] != records[0]["query_id"]
    record = records[0]
    # every retrieved candidate is logged (more than the one in the prompt), best first, as its key (title + text,
    # the text that was encoded and shown in the prompt)
    assert record["neg"][0] == "Paris Paris is the capital and largest city of France."
    assert len(record["neg"]) == 3 and record["pos"] == [] and record["in_prompt"] == ["paris"]
    assert (record["answers"], record["task"], record["query_id"]) == (["Paris."], "qa", result["augment_id"])
    path = tmp_path / "kb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = load_records(path)
    assert loaded[0].candidates == record["neg"] and loaded[0].answers == ["Paris."]
    assert service.export_feedback("conversation_memory") == []  # one memory item: no ranking to learn from
    service.add_turns("c1", [{"role": "user", "content": "I hate rain."}, {"role": "assistant", "content": "Me too."}])
    again = service.augment("Where should I live?", conversation_id="c1", sources=[{"memory": "conversation"}])
    service.feedback(again["augment_id"], "Paris.")
    memory = service.export_feedback("conversation_memory")
    path.write_text(json.dumps(memory[0]) + "\n")
    chat = load_records(path)[0]
    assert chat.uses_history and sorted(chat.candidates) == [
        "Speaker 1: I hate rain.\nSpeaker 2: Me too.",
        "Speaker 1: I love Paris.\nSpeaker 2: So do I.",
    ]


def test_feedback_survives_a_restart(make_service, tmp_path):
    first = make_service(tmp_path / "d")
    first.create_collection("kb", "qa")
    first.upsert("kb", PASSAGES)
    augment_id = first.augment("capital of France", sources=[{"collection": "kb"}])["augment_id"]
    first.close()
    second = make_service(tmp_path / "d")
    second.feedback(augment_id, "Paris")
    assert [r["query_id"] for r in second.export_feedback("kb")] == [augment_id]


def test_embeddings_are_the_encoder_vectors(service, serve_embedder):
    got = service.embeddings(["a dog", "a cat"], task="chat", input_type="passage")
    np.testing.assert_allclose(got, serve_embedder.encode_keys(["a dog", "a cat"], task="chat"), atol=1e-6)
    got = service.embeddings("a dog")
    np.testing.assert_allclose(got, serve_embedder.encode_queries(["a dog"], task="qa"), atol=1e-6)


def test_augment_prompt_is_the_prompt_layers_within_the_budget(service, prompt_tokenizer):
    from llm_embedder.prompts import render_prompt
    from llm_embedder.tasks.registry import get_task

    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    query = "What is the capital of France?"
    result = service.augment(query, sources=[{"collection": "kb", "top_k": 3}])
    keys = [f"{h['title']} {h['text']}" for h in result["hits"]]
    assert result["prompt"] == render_prompt(get_task("qa"), query, keys, tokenizer=prompt_tokenizer).context
    assert [h["in_prompt"] for h in result["hits"]] == [True, True, True]
    # room for the best key only: the less relevant ones are dropped (and logged as not in the prompt)
    one = render_prompt(get_task("qa"), query, keys[:1], tokenizer=prompt_tokenizer).context
    budget = len(prompt_tokenizer(one, add_special_tokens=False)["input_ids"]) + 6
    tight = service.augment(query, sources=[{"collection": "kb", "top_k": 3}], max_prompt_tokens=budget)
    assert tight["prompt"] == one
    assert [h["in_prompt"] for h in tight["hits"]] == [True, False, False]


def test_a_knowledge_source_can_search_with_the_conversation(service):
    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    service.add_turns(
        "c1", [{"role": "user", "content": "Tell me about France."}, {"role": "assistant", "content": "Sure."}]
    )
    plain = service.augment("And its capital?", conversation_id="c1", sources=[{"collection": "kb"}])
    joined = service.augment(
        "And its capital?", conversation_id="c1", sources=[{"collection": "kb", "conversation": True}]
    )
    for result in (plain, joined):
        service.feedback(result["augment_id"], "Paris")
    assert [r["query"] for r in service.export_feedback("kb")] == [
        "And its capital?",
        "Tell me about France. Sure. And its capital?",
    ]
    with pytest.raises(UserError, match=r"sources\[0\].conversation must be true or false, got 'yes'"):
        service.augment("q", sources=[{"collection": "kb", "conversation": "yes"}])


def test_generate_with_an_lm(make_service, tmp_path):
    from lm_helpers import make_tiny_lm

    from llm_embedder.serving.generation import Generator

    make_tiny_lm(tmp_path / "lm")
    generator = Generator.load(str(tmp_path / "lm"), max_new_tokens=4)
    service = make_service()
    service.lm = generator
    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    result = service.augment("capital of France?", sources=[{"collection": "kb", "top_k": 1}], generate=True)
    inputs = generator.tokenizer(result["prompt"], return_tensors="pt")
    expected = generator.model.generate(
        **inputs, max_new_tokens=4, do_sample=False, pad_token_id=generator.tokenizer.pad_token_id
    )
    assert (
        result["answer"]
        == generator.tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    )
    assert result["answer"].strip()  # random weights, but some text
    assert [r["answers"] for r in service.export_feedback("kb")] == [[result["answer"]]]  # recorded as the feedback


def test_coroutine_forms_answer_as_the_plain_methods(service, serve_embedder):
    service.create_collection("kb", "qa")

    async def calls():
        ids = await service.upsert_async("kb", PASSAGES)
        hits = await service.search_async("kb", "Which city is the capital of France?", top_k=2)
        hybrid = await service.search_async("kb", "banana fruit", top_k=2, mode="hybrid")
        bm25 = await service.search_async("kb", "banana fruit", top_k=2, mode="bm25")
        vectors, tokens = await service.embeddings_async(["a dog", "a cat sat"], task="chat", input_type="passage")
        return ids, hits, hybrid, bm25, vectors, tokens

    ids, hits, hybrid, bm25, vectors, tokens = asyncio.run(calls())
    assert ids == ["paris", "banana", "python"]
    assert hits == service.search("kb", "Which city is the capital of France?", top_k=2)
    assert hybrid == service.search("kb", "banana fruit", top_k=2, mode="hybrid")
    assert bm25 == service.search("kb", "banana fruit", top_k=2, mode="bm25")
    np.testing.assert_allclose(vectors, serve_embedder.encode_keys(["a dog", "a cat sat"], task="chat"), atol=1e-6)
    assert tokens == sum(len(ids) for ids in serve_embedder.model.tokenizer(["a dog", "a cat sat"])["input_ids"])


def test_coroutine_forms_refuse_bad_input_with_the_same_lines(service):
    service.create_collection("kb", "qa")
    cases = [
        (service.search_async("nope", "q"), NotFound, "unknown collection 'nope'"),
        (service.search_async("kb", "  "), UserError, "query is empty"),
        (service.search_async("kb", "q", mode="sparse"), UserError, "mode 'sparse' is not a search mode"),
        (service.search_async("kb", "q", top_k=0), UserError, "top_k must be an integer in 1..200, got 0"),
        (service.search_async("conversation_memory", "q"), UserError, "is reserved for memory"),
        (service.upsert_async("kb", [{"text": ""}]), UserError, r"documents\[0\].text is empty"),
        (service.embeddings_async([], task="qa"), UserError, "input is empty"),
    ]
    for call, error, line in cases:
        with pytest.raises(error, match=line):
            asyncio.run(call)


def test_the_searches_of_one_encoder_batch_share_one_store_call(make_service):
    service = make_service()
    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    gate = threading.Event()
    entered = threading.Event()

    def gated(texts, task, side):
        entered.set()
        gate.wait(10)
        return service._encode(texts, task, side)

    service.encoder.close()
    service.encoder = MicroBatcher(gated, max_queue=8)
    collection = service.store.collection("kb")
    calls: list[int] = []
    search_many = collection.search_many

    def counted(**kwargs):
        calls.append(len(kwargs["vectors"]))
        return search_many(**kwargs)

    collection.search_many = counted  # type: ignore[method-assign]
    queries = ["capital of France", "a yellow fruit", "programming language"]

    async def concurrent():
        first = asyncio.ensure_future(service.search_async("kb", "France", top_k=1))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(service.search_async("kb", q, top_k=1)) for q in queries]
        while service.encoder.depth < len(queries):
            await asyncio.sleep(0.005)
        gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(concurrent())
    assert calls == [1, 3]  # the first search alone, then the three that waited together: one call
    assert [hits[0]["id"] for hits in rest] == ["paris", "banana", "python"]
    collection.search_many = search_many  # type: ignore[method-assign]
    alone = [service.search("kb", q, top_k=1) for q in queries]
    # the same hits as one search at a time; scores to float32 rounding (a batch of 3 and a batch of 1 may take
    # different matrix kernels: on an AMX CPU they differ in the 7th digit)
    assert [[{**h, "score": None} for h in hits] for hits in rest] == [
        [{**h, "score": None} for h in hits] for hits in alone
    ]
    for got, want in zip(rest, alone, strict=True):
        assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], rel=1e-5)


def test_serve_uses_the_fastest_encoder_runtime_of_the_device():
    assert serving_backend("auto", "cpu") == "onnx-int8"
    assert serving_backend("auto", "cuda:0") == "torch"
    assert serving_backend("onnx", "cpu") == "onnx"
    assert serving_backend("torch", "cpu") == "torch"
