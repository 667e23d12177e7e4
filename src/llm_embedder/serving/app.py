"""The HTTP API of ``llm-embedder serve``: a thin FastAPI layer over :class:`~.service.RetrievalService`.

Every error is ``{"error": "one line: what, where (route and field), what to do"}`` with a 4xx: user errors of the
library map to 400 (404 unknown, 409 conflict, 413 too large), request-validation errors of FastAPI name the field,
a full encoder queue is 429 with ``Retry-After``, a missing or wrong API key 401.

The hot routes (search, upsert, embeddings) are coroutines: they check the request on the event loop and await the
micro-batching encoder (:mod:`.batcher`) without a thread hop; a search's store query runs in the encoder thread,
batched with the other searches of its encoder call, and a store write in a thread. Their answers are serialised
with orjson, embeddings straight from the float32 arrays (stdlib ``json`` took 5.8 ms for 32 embeddings, orjson
0.26 ms), without FastAPI's response-model pass. Every other route is a plain ``def`` that FastAPI runs in its worker threads, so the
event loop never waits on the encoder or the store.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_embedder.errors import UserError
from llm_embedder.serving.batcher import Overloaded
from llm_embedder.serving.errors import http_status
from llm_embedder.serving.service import RetrievalService

#: routes reachable without the API key (liveness probes, the API's own documentation)
OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/docs/oauth2-redirect")


class _Body(BaseModel):
    # strict: a number where a string is expected is an error, not silently converted; unknown fields are typos
    model_config = ConfigDict(extra="forbid", strict=True)


class CollectionIn(_Body):
    name: str
    task: str
    index: str = Field(default="flat", description="flat (exact) or the store's ANN index: hnsw, ivf (embedded)")


class DocumentIn(_Body):
    id: str | None = None
    text: str
    title: str | None = None
    metadata: dict[str, Any] | None = None
    tool_schema: dict[str, Any] | None = Field(default=None, alias="schema", description="a tool's JSON schema")


class DocumentsIn(_Body):
    documents: list[DocumentIn]


class DeleteIn(_Body):
    ids: list[str] | None = None
    filter: dict[str, Any] | None = None


class SearchIn(_Body):
    query: str
    top_k: int = 10
    filter: dict[str, Any] | None = None
    mode: Literal["dense", "bm25", "hybrid"] = "dense"


class Turn(_Body):
    role: Literal["user", "assistant"]
    content: str


class TurnsIn(_Body):
    turns: list[Turn]


class MemorySearchIn(_Body):
    query: str
    top_k: int = 3


class TextIn(_Body):
    text: str


class DocumentSearchIn(_Body):
    query: str | None = None
    top_k: int = 2


class Source(_Body):
    collection: str | None = None
    memory: Literal["conversation", "document"] | None = None
    document_id: str | None = None
    top_k: int = 3
    filter: dict[str, Any] | None = None
    mode: Literal["dense", "bm25", "hybrid"] = "dense"
    conversation: bool | None = Field(
        default=None, description="query with the recent conversation (default: for convsearch and tool collections)"
    )


class AugmentIn(_Body):
    query: str
    conversation_id: str | None = None
    sources: list[Source]
    max_prompt_tokens: int | None = None
    generate: bool = False


class FeedbackIn(_Body):
    augment_id: str
    answer: str


class EmbeddingsIn(_Body):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    task: str | None = None
    input_type: Literal["query", "passage"] | None = None
    user: str | None = None


class FastJSON(Response):
    """A JSON answer serialised by orjson (numpy arrays included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, line: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(line.split())}, status_code=status, headers=headers)


def _validation_line(exc: RequestValidationError) -> str:
    """The first validation problem as one line naming the field (``documents[2].text``)."""
    errors = exc.errors()
    if not errors:
        return "invalid request body"
    first = errors[0]
    parts: list[str] = []
    for item in first.get("loc", ())[1:] if first.get("loc", ("",))[0] == "body" else first.get("loc", ()):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    field = "".join(parts) or "body"
    message = str(first.get("msg", "invalid")).rstrip(".")
    if first.get("type") == "json_invalid":
        return f"body is not valid JSON ({message}); send a JSON object"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"field '{field}': {message}{more}; see /docs for the request schema"


class BodyTooLarge(Exception):
    """A body without Content-Length grew past the limit while it was read."""


class Guard:
    """API key, body size limit and request metrics, as a plain ASGI middleware.

    Why not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs every request through an extra task
    and memory stream, a cost paid on each call of a latency-bound service. Here the checks touch only the scope and
    wrap ``receive`` (a chunked body is counted as it streams; past the limit :class:`BodyTooLarge` is raised from
    the body read and answered 413 by the app's handler) and ``send`` (for the status of the metrics).
    """

    def __init__(self, app: Any, *, api_key: str | None, limit: int, metrics: Any) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key is not None else None
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        where = f"{scope['method']} {scope['path']}"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if not hmac.compare_digest(token.encode(), self.api_key):
                what = "wrong API key" if token else "missing API key"
                self.metrics.requests.labels("unauthorized", "401").inc()
                line = f"{where}: {what}; send 'Authorization: Bearer KEY' with the server's --api-key"
                await _error(401, line)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            self.metrics.requests.labels("too_large", "413").inc()
            line = f"{where}: body of {length} bytes is over the limit of {self.limit}; send smaller batches"
            await _error(413, line)(scope, receive, send)
            return
        received = 0
        status = 500

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(f"body is over the limit of {self.limit} bytes")
            return message

        async def status_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, counted_receive, status_send)
        name = getattr(scope.get("route"), "path", "unmatched")
        if status != 413:  # counted by the handler
            self.metrics.requests.labels(name, str(status)).inc()
        self.metrics.request_seconds.labels(name).observe(time.perf_counter() - start)


def create_app(service: RetrievalService, *, api_key: str | None = None) -> FastAPI:
    """The FastAPI application over ``service`` (``api_key``: required as ``Authorization: Bearer KEY``)."""
    app = FastAPI(
        title="llm-embedder",
        summary="Retrieval augmentation for LLM applications: knowledge, memory, examples and tools, one embedder.",
        version="0.1.0",
    )
    app.state.service = service
    metrics = service.metrics

    app.add_middleware(Guard, api_key=api_key, limit=service.limits.max_body_bytes, metrics=metrics)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        metrics.requests.labels("too_large", "413").inc()
        return _error(413, f"{request.method} {request.url.path}: {exc}; send smaller batches")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return _error(http_status(exc), f"{request.method} {request.url.path}: {exc.line()}")

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        metrics.rejected.inc()
        return _error(
            429,
            f"{request.method} {request.url.path}: {exc}; retry after {exc.retry_after} s",
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, f"{request.method} {request.url.path}: {_validation_line(exc)}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps errors of the body read in a 400
            return await too_large(request, exc.__cause__)
        hint = "; see /docs for the routes" if exc.status_code in (404, 405) else ""
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}{hint}")

    # ------------------------------------------------------------------ collections
    @app.post("/v1/collections", status_code=201)
    def create_collection(body: CollectionIn) -> dict[str, Any]:
        return service.create_collection(body.name, body.task, index=body.index)

    @app.get("/v1/collections")
    def list_collections() -> dict[str, Any]:
        return {"collections": service.list_collections()}

    @app.delete("/v1/collections/{name}")
    def drop_collection(name: str) -> dict[str, Any]:
        service.drop_collection(name)
        return {"dropped": name}

    @app.post("/v1/collections/{name}/documents", response_class=FastJSON)
    async def upsert(name: str, body: DocumentsIn) -> FastJSON:
        documents = [d.model_dump(by_alias=True, exclude_none=True) for d in body.documents]
        return FastJSON({"ids": await service.upsert_async(name, documents)})

    @app.delete("/v1/collections/{name}/documents")
    def delete_documents(name: str, body: DeleteIn) -> dict[str, Any]:
        return {"deleted": service.delete_documents(name, ids=body.ids, filter=body.filter)}

    @app.post("/v1/collections/{name}/search", response_class=FastJSON)
    async def search(name: str, body: SearchIn) -> FastJSON:
        hits = await service.search_async(name, body.query, top_k=body.top_k, filter=body.filter, mode=body.mode)
        return FastJSON({"hits": hits})

    @app.get("/v1/collections/{name}/feedback")
    def export_feedback(name: str) -> Response:
        """The collection's answered augments as JSON lines in the record format (for ``llm-embedder score``)."""
        records = service.iter_feedback(name)  # unknown names fail here, before the 200 is sent
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    # ------------------------------------------------------------------ memory
    @app.post("/v1/conversations/{conversation_id}/turns")
    def add_turns(conversation_id: str, body: TurnsIn) -> dict[str, Any]:
        return service.add_turns(conversation_id, [t.model_dump() for t in body.turns])

    @app.post("/v1/conversations/{conversation_id}/search")
    def search_conversation(conversation_id: str, body: MemorySearchIn) -> dict[str, Any]:
        return {"hits": service.search_conversation(conversation_id, body.query, top_k=body.top_k)}

    @app.delete("/v1/conversations/{conversation_id}")
    def forget_conversation(conversation_id: str) -> dict[str, Any]:
        return {"deleted": service.forget_conversation(conversation_id)}

    @app.post("/v1/documents/{document_id}/text")
    def append_text(document_id: str, body: TextIn) -> dict[str, Any]:
        return service.append_text(document_id, body.text)

    @app.post("/v1/documents/{document_id}/search")
    def search_document(document_id: str, body: DocumentSearchIn) -> dict[str, Any]:
        return {"hits": service.search_document(document_id, body.query, top_k=body.top_k)}

    @app.delete("/v1/documents/{document_id}")
    def forget_document(document_id: str) -> dict[str, Any]:
        return {"deleted": service.forget_document(document_id)}

    # ------------------------------------------------------------------ augment, feedback, embeddings
    @app.post("/v1/augment")
    def augment(body: AugmentIn) -> dict[str, Any]:
        sources = [s.model_dump(exclude_none=True, exclude_defaults=False) for s in body.sources]
        return service.augment(
            body.query,
            sources=sources,
            conversation_id=body.conversation_id,
            max_prompt_tokens=body.max_prompt_tokens,
            generate=body.generate,
        )

    @app.post("/v1/feedback")
    def feedback(body: FeedbackIn) -> dict[str, Any]:
        service.feedback(body.augment_id, body.answer)
        return {"recorded": body.augment_id}

    @app.post("/v1/embeddings", response_class=FastJSON)
    async def embeddings(body: EmbeddingsIn) -> FastJSON:
        """OpenAI-compatible; ``task`` and ``input_type`` (query / passage) choose the instruction."""
        vectors, tokens = await service.embeddings_async(body.input, task=body.task, input_type=body.input_type)
        data = []
        for i, vector in enumerate(vectors):
            value: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if body.encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        model = body.model or service.embedder.source
        return FastJSON(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )

    # ------------------------------------------------------------------ operations
    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.queue_depth.set(service.encoder.depth)
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
