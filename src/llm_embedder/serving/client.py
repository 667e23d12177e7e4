"""A Python client of ``llm-embedder serve``: the operations of :class:`~.service.RetrievalService` over HTTP.

    from llm_embedder.serving import RetrievalClient

    with RetrievalClient("http://127.0.0.1:8000", api_key=None) as client:
        client.create_collection("kb", task="qa")
        client.upsert("kb", [{"text": "Paris is the capital of France."}])
        result = client.augment("capital of France?", sources=[{"collection": "kb"}])
        client.feedback(result["augment_id"], "Paris")

A 4xx answer raises :class:`ServiceError` carrying the server's one-line message and status (429 adds
``retry_after``).
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np


class ServiceError(Exception):
    """An error answer of the server: ``status`` and its one-line ``message``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{status}: {message}")


class RetrievalClient:
    """See the module docstring; ``transport`` lets tests talk to an app in-process."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            retry = response.headers.get("retry-after")
            raise ServiceError(response.status_code, message, float(retry) if retry else None)
        if response.headers.get("content-type", "").startswith("application/x-ndjson"):
            return response.text
        return response.json()

    # collections
    def create_collection(self, name: str, task: str, *, index: str = "flat") -> dict[str, Any]:
        return self._call("POST", "/v1/collections", {"name": name, "task": task, "index": index})

    def list_collections(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/collections")["collections"]

    def drop_collection(self, name: str) -> None:
        self._call("DELETE", f"/v1/collections/{name}")

    def upsert(self, name: str, documents: list[dict[str, Any]]) -> list[str]:
        return self._call("POST", f"/v1/collections/{name}/documents", {"documents": documents})["ids"]

    def delete_documents(self, name: str, *, ids: list[str] | None = None, filter: dict[str, Any] | None = None) -> int:
        body = {k: v for k, v in (("ids", ids), ("filter", filter)) if v is not None}
        return self._call("DELETE", f"/v1/collections/{name}/documents", body)["deleted"]

    def search(
        self, name: str, query: str, *, top_k: int = 10, filter: dict[str, Any] | None = None, mode: str = "dense"
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"query": query, "top_k": top_k, "mode": mode}
        if filter is not None:
            body["filter"] = filter
        return self._call("POST", f"/v1/collections/{name}/search", body)["hits"]

    def export_feedback(self, name: str) -> str:
        """The collection's feedback records as JSON lines (write them to a file for ``llm-embedder score``)."""
        return self._call("GET", f"/v1/collections/{name}/feedback")

    # memory
    def add_turns(self, conversation_id: str, turns: list[dict[str, str]]) -> dict[str, Any]:
        return self._call("POST", f"/v1/conversations/{conversation_id}/turns", {"turns": turns})

    def search_conversation(self, conversation_id: str, query: str, *, top_k: int = 3) -> list[dict[str, Any]]:
        return self._call("POST", f"/v1/conversations/{conversation_id}/search", {"query": query, "top_k": top_k})[
            "hits"
        ]

    def forget_conversation(self, conversation_id: str) -> int:
        return self._call("DELETE", f"/v1/conversations/{conversation_id}")["deleted"]

    def append_text(self, document_id: str, text: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/documents/{document_id}/text", {"text": text})

    def search_document(self, document_id: str, query: str | None = None, *, top_k: int = 2) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"top_k": top_k}
        if query is not None:
            body["query"] = query
        return self._call("POST", f"/v1/documents/{document_id}/search", body)["hits"]

    def forget_document(self, document_id: str) -> int:
        return self._call("DELETE", f"/v1/documents/{document_id}")["deleted"]

    # augment, feedback, embeddings
    def augment(
        self,
        query: str,
        *,
        sources: list[dict[str, Any]],
        conversation_id: str | None = None,
        max_prompt_tokens: int | None = None,
        generate: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "sources": sources, "generate": generate}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        if max_prompt_tokens is not None:
            body["max_prompt_tokens"] = max_prompt_tokens
        return self._call("POST", "/v1/augment", body)

    def feedback(self, augment_id: str, answer: str) -> None:
        self._call("POST", "/v1/feedback", {"augment_id": augment_id, "answer": answer})

    def embeddings(
        self, inputs: str | list[str], *, task: str | None = None, input_type: str | None = None
    ) -> np.ndarray:
        body: dict[str, Any] = {"input": inputs}
        if task is not None:
            body["task"] = task
        if input_type is not None:
            body["input_type"] = input_type
        data = self._call("POST", "/v1/embeddings", body)["data"]
        return np.asarray([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32)

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")
