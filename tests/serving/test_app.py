"""The HTTP API on a real uvicorn (in a thread, free loopback port): every route through the Python client, every
bad input as one line with its 4xx, the API key, the 429 path and the metrics."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import numpy as np
import pytest

from llm_embedder.data.records import load_records
from llm_embedder.serving.batcher import MicroBatcher
from llm_embedder.serving.client import RetrievalClient, ServiceError

PASSAGES = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "banana", "title": "Banana", "text": "A banana is an elongated, edible fruit."},
]
TOOLS = [
    {
        "id": "get_price",
        "text": "get_price: look up the current price of a product",
        "schema": {"name": "get_price", "parameters": {"type": "object", "properties": {"item": {"type": "string"}}}},
    },
    {"id": "get_weather", "text": "get_weather: the weather forecast for a city", "schema": {"name": "get_weather"}},
]


def test_every_route_through_the_client(service, serve_app, serve_embedder, tmp_path):
    with serve_app(service) as server, RetrievalClient(server.url) as client:
        assert client.health()["status"] == "ok"
        assert client.create_collection("kb", "qa")["task"] == "qa"
        assert client.create_collection("tools", "tool")["task"] == "tool"
        assert client.upsert("kb", PASSAGES) == ["paris", "banana"]
        assert client.upsert("tools", TOOLS) == ["get_price", "get_weather"]
        assert [(c["name"], c["count"]) for c in client.list_collections()] == [("kb", 2), ("tools", 2)]
        hits = client.search("kb", "capital of France", top_k=1)
        assert (hits[0]["id"], hits[0]["title"]) == ("paris", "Paris")
        assert client.search("kb", "banana fruit", top_k=1, mode="bm25")[0]["id"] == "banana"
        assert client.search("kb", "banana fruit", top_k=2, mode="hybrid")[0]["id"] == "banana"

        turns = [
            {"role": "user", "content": "I want to buy the new iPhone 15."},
            {"role": "assistant", "content": "It was released in September."},
        ]
        assert client.add_turns("c1", turns) == {"conversation_id": "c1", "exchanges": 1}
        memory = client.search_conversation("c1", "Which phone do I want?")
        assert [h["text"] for h in memory] == [
            "Speaker 1: I want to buy the new iPhone 15.\nSpeaker 2: It was released in September."
        ]
        assert client.search_conversation("c2", "Which phone do I want?") == []

        assert client.append_text("book", "Once upon a time there was a king. " * 10)["chunks"] > 2
        assert client.search_document("book", top_k=1)[0]["metadata"]["chunk"] >= 0
        assert client.search_document("book", "the king", top_k=1)[0]["text"]

        result = client.augment(
            "What is its price?",
            conversation_id="c1",
            sources=[{"memory": "conversation", "top_k": 1}, {"collection": "tools", "top_k": 1}, {"collection": "kb"}],
            max_prompt_tokens=512,
        )
        assert result["prompt"].startswith(
            "Speaker 1: I want to buy the new iPhone 15.\nSpeaker 2: It was released in September.\n"
            "get_price: look up the current price of a product\n"
        )
        assert result["prompt"].endswith("\nSpeaker 1: What is its price?\nSpeaker 2: ")
        tool = next(h for h in result["hits"] if h["source"] == "tools")
        assert (tool["id"], tool["schema"]) == ("get_price", TOOLS[0]["schema"])
        client.feedback(result["augment_id"], "The iPhone 15 costs 799 dollars.")

        exported = client.export_feedback("tools")
        (tmp_path / "tools.jsonl").write_text(exported)
        record = load_records(tmp_path / "tools.jsonl")[0]
        assert record.task == "tool" and record.candidates[0] == TOOLS[0]["text"] and len(record.candidates) == 2
        assert record.query == "I want to buy the new iPhone 15. It was released in September. What is its price?"

        vectors = client.embeddings(["a dog"], task="chat", input_type="passage")
        np.testing.assert_allclose(vectors, serve_embedder.encode_keys(["a dog"], task="chat"), atol=1e-6)

        assert client.delete_documents("kb", ids=["banana"]) == 1
        assert client.delete_documents("tools", filter={"missing_field": 1}) == 0
        assert client.forget_conversation("c1") == 1
        assert client.forget_document("book") > 2
        client.drop_collection("kb")
        assert [c["name"] for c in client.list_collections()] == ["tools"]


def test_openai_compatible_embeddings(service, serve_app, serve_embedder):
    with serve_app(service) as server:
        body = {"input": ["hello", "world"], "model": "anything", "task": "qa", "input_type": "passage"}
        answer = httpx.post(f"{server.url}/v1/embeddings", json=body).json()
        assert answer["object"] == "list" and answer["model"] == "anything"
        assert [d["index"] for d in answer["data"]] == [0, 1] and answer["data"][0]["object"] == "embedding"
        assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] == 6  # [CLS] word [SEP] each
        expected = serve_embedder.encode_keys(["hello", "world"], task="qa")
        np.testing.assert_allclose([d["embedding"] for d in answer["data"]], expected, atol=1e-6)
        # the OpenAI client asks for base64 by default: little-endian float32
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
        decoded = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_allclose(decoded, serve_embedder.encode_queries(["hello"], task="qa")[0], atol=1e-6)


BAD = [
    (
        "POST",
        "/v1/collections",
        {"name": "a/b", "task": "qa"},
        400,
        "POST /v1/collections: collection 'a/b' is not a valid name",
    ),
    ("POST", "/v1/collections", {"name": "..", "task": "qa"}, 400, "collection '..' is not a valid name"),
    ("POST", "/v1/collections", {"name": "kb2", "task": "nope"}, 404, "unknown task 'nope'"),
    ("POST", "/v1/collections", {"name": "kb", "task": "tool"}, 409, "collection 'kb' exists with task 'qa'"),
    ("POST", "/v1/collections", {"task": "qa"}, 422, "POST /v1/collections: field 'name': Field required"),
    ("POST", "/v1/collections", {"name": 3, "task": "qa"}, 422, "field 'name': Input should be a valid string"),
    ("POST", "/v1/collections", {"name": "x", "task": "qa", "extra": 1}, 422, "field 'extra': Extra inputs"),
    ("POST", "/v1/collections/nope/search", {"query": "q"}, 404, "unknown collection 'nope' (create it first"),
    ("POST", "/v1/collections/kb/search", {"query": ""}, 400, "POST /v1/collections/kb/search: query is empty"),
    (
        "POST",
        "/v1/collections/kb/search",
        {"query": "q", "top_k": "3"},
        422,
        "field 'top_k': Input should be a valid integer",
    ),
    ("POST", "/v1/collections/kb/search", {"query": "q", "mode": "x"}, 422, "field 'mode': Input should be 'dense'"),
    ("POST", "/v1/collections/kb/documents", {"documents": [{"text": " "}]}, 400, "documents[0].text is empty"),
    ("POST", "/v1/collections/kb/documents", {"documents": [{"text": 5}]}, 422, "field 'documents[0].text'"),
    ("POST", "/v1/collections/kb/documents", {"documents": [{"text": "a"}] * 5}, 413, "documents has 5 items"),
    (
        "POST",
        "/v1/collections/kb/documents",
        {"documents": "x"},
        422,
        "field 'documents': Input should be a valid list",
    ),
    ("DELETE", "/v1/collections/kb/documents", {}, 400, "nothing to delete: neither 'ids' nor 'filter' given"),
    (
        "POST",
        "/v1/conversations/a.b/turns",
        {"turns": [{"role": "user", "content": "x"}]},
        400,
        "conversation id 'a.b'",
    ),
    ("POST", "/v1/conversations/c/turns", {"turns": [{"role": "bot", "content": "x"}]}, 422, "field 'turns[0].role'"),
    (
        "POST",
        "/v1/conversations/c/turns",
        {"turns": [{"role": "user", "content": ""}]},
        400,
        "turns[0].content is empty",
    ),
    ("POST", "/v1/augment", {"query": "q", "sources": [{"memory": "conversation"}]}, 400, "needs 'conversation_id'"),
    ("POST", "/v1/augment", {"query": "q", "sources": [{"collection": "kb"}], "generate": True}, 400, "--lm NAME"),
    ("POST", "/v1/feedback", {"augment_id": "nope", "answer": "x"}, 404, "unknown augment_id 'nope'"),
    ("POST", "/v1/embeddings", {"input": []}, 400, "input is empty"),
    ("POST", "/v1/embeddings", {"input": ["a"], "task": "nope"}, 404, "unknown task 'nope'"),
    ("GET", "/v1/nothing", None, 404, "GET /v1/nothing: Not Found; see /docs for the routes"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"), BAD, ids=[f"{b[0]} {b[1]} {b[3]}" for b in BAD]
)
def test_bad_input_gets_a_4xx_and_one_line(make_service, serve_app, method, path, body, status, message):
    service = make_service(max_items=4)
    service.create_collection("kb", "qa")
    with serve_app(service) as server:
        response = httpx.request(method, server.url + path, json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error and "\n" not in error
        assert httpx.get(server.url + "/health").status_code == 200  # and it keeps serving


def test_invalid_json_and_too_large_bodies(make_service, serve_app):
    service = make_service(max_body_bytes=1000)
    service.create_collection("kb", "qa")
    with serve_app(service) as server:
        response = httpx.post(
            server.url + "/v1/collections/kb/search", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["error"].startswith("POST /v1/collections/kb/search: body is not valid JSON")
        big = json.dumps({"documents": [{"text": "x" * 2000}]})
        response = httpx.post(
            server.url + "/v1/collections/kb/documents", content=big, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json() == {
            "error": "POST /v1/collections/kb/documents: body of 2029 bytes is over the limit of 1000; send smaller batches"
        }

        def chunks():
            yield big[:500].encode()
            yield big[500:].encode()

        response = httpx.post(
            server.url + "/v1/collections/kb/documents", content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413 and "over the limit of 1000 bytes" in response.json()["error"]


def test_api_key(service, serve_app):
    with serve_app(service, api_key="s3cret") as server:
        assert httpx.get(server.url + "/health").status_code == 200  # liveness stays open
        missing = httpx.get(server.url + "/v1/collections")
        assert missing.status_code == 401
        assert missing.json() == {
            "error": "GET /v1/collections: missing API key; send 'Authorization: Bearer KEY' with the server's --api-key"
        }
        wrong = httpx.get(server.url + "/v1/collections", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"].startswith("GET /v1/collections: wrong API key")
        with RetrievalClient(server.url, api_key="s3cret") as client:
            assert client.list_collections() == []
        with RetrievalClient(server.url, api_key="nope") as client, pytest.raises(ServiceError) as info:
            client.list_collections()
        assert info.value.status == 401


def test_full_encoder_queue_answers_429_with_retry_after(make_service, serve_app):
    service = make_service(max_queue=1)
    service.create_collection("kb", "qa")
    service.upsert("kb", PASSAGES)
    gate = threading.Event()
    entered = threading.Event()

    def slow_encode(texts, task, side):
        entered.set()
        gate.wait(10)
        return service._encode(texts, task, side)

    service.encoder.close()
    service.encoder = MicroBatcher(slow_encode, max_queue=1)
    with serve_app(service) as server:
        results: list[int] = []

        def search() -> None:
            results.append(httpx.post(server.url + "/v1/collections/kb/search", json={"query": "France"}).status_code)

        busy = threading.Thread(target=search)
        busy.start()
        assert entered.wait(10)
        queued = threading.Thread(target=search)
        queued.start()
        deadline = time.monotonic() + 10
        while service.encoder.depth < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = httpx.post(server.url + "/v1/collections/kb/search", json={"query": "France"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "error": "POST /v1/collections/kb/search: the encoder queue is full (1 requests waiting); retry after 1 s"
        }
        gate.set()
        busy.join(10)
        queued.join(10)
        assert results == [200, 200]
        metrics = httpx.get(server.url + "/metrics").text
        assert "llm_embedder_encoder_rejected_total 1.0" in metrics


def test_metrics(service, serve_app):
    service.create_collection("kb", "qa")
    with serve_app(service) as server, RetrievalClient(server.url) as client:
        client.upsert("kb", PASSAGES)
        client.search("kb", "France")
        client.search("kb", "fruit")
        text = httpx.get(server.url + "/metrics").text
    assert 'llm_embedder_requests_total{route="/v1/collections/{name}/search",status="200"} 2.0' in text
    assert 'llm_embedder_encoder_batch_texts_count{side="query",task="qa"} 2.0' in text
    assert 'llm_embedder_encoder_batch_texts_sum{side="key",task="qa"} 2.0' in text
    assert 'llm_embedder_search_seconds_count{mode="dense",task="qa"} 2.0' in text
    assert "llm_embedder_encode_seconds_bucket" in text and "llm_embedder_encoder_queue_depth 0.0" in text


def test_isolation_over_http(service, serve_app):
    with serve_app(service) as server, RetrievalClient(server.url) as client:
        client.add_turns(
            "alice", [{"role": "user", "content": "My password is tulip."}, {"role": "assistant", "content": "Noted."}]
        )
        assert client.search_conversation("bob", "What is my password?") == []
        client.append_text("alice-notes", "The secret plan is to meet at noon by the bridge. " * 8)
        with pytest.raises(ServiceError) as info:
            client.search_document("bob-notes", "secret plan")
        assert info.value.status == 404
        client.create_collection("a", "qa")
        client.create_collection("b", "qa")
        client.upsert("a", [{"id": "x", "text": "only in a"}])
        assert client.search("b", "only in a") == []
        assert client.delete_documents("b", ids=["x"]) == 0 and len(client.search("a", "only in a")) == 1
        assert client.forget_conversation("bob") == 0
        assert len(client.search_conversation("alice", "What is my password?")) == 1


def test_a_chunked_body_under_the_limit_reaches_the_route(service, serve_app):
    service.create_collection("kb", "qa")
    body = json.dumps({"documents": [{"id": "a", "text": "streamed in two chunks"}]}).encode()
    with serve_app(service) as server:
        response = httpx.post(
            server.url + "/v1/collections/kb/documents",
            content=iter([body[:10], body[10:]]),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200 and response.json() == {"ids": ["a"]}
