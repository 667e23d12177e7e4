"""Fixtures of the service tests: one encoder for the session, a fresh service per test, servers on free ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_embedder.serving.service import Limits, RetrievalService


@pytest.fixture(scope="session")
def serve_embedder() -> Any:
    """The bundled encoder WITH the task instructions on, so every test also checks which instruction is used."""
    from llm_embedder import LLMEmbedder

    return LLMEmbedder(device="cpu", use_instructions=True)


@pytest.fixture(scope="session")
def prompt_tokenizer() -> Any:
    """The bundled LM's tokenizer (what ``serve`` uses without --lm): prompt budgets and long-document chunks."""
    from transformers import AutoTokenizer

    from llm_embedder.lm.loading import resolve_lm

    return AutoTokenizer.from_pretrained(resolve_lm(None))


def open_test_store(folder: Path) -> Any:
    from llm_embedder.retrieval.store import open_store

    return open_store(str(folder))


@pytest.fixture
def make_service(tmp_path: Path, serve_embedder: Any, prompt_tokenizer: Any) -> Iterator[Any]:
    made: list[RetrievalService] = []

    def make(folder: Path | None = None, **limits: Any) -> RetrievalService:
        folder = folder or tmp_path / "data"
        service = RetrievalService(
            serve_embedder,
            open_test_store(folder / "store"),
            folder,
            limits=Limits(**limits),
            prompt_tokenizer=lambda: prompt_tokenizer,
            chunk_tokens=16,
        )
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service: Any) -> RetrievalService:
    return make_service()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """uvicorn serving an app in a thread of the test process, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve_app() -> Any:
    """``serve_app(service, api_key=None)``: a started :class:`ThreadServer` context."""
    from llm_embedder.serving.app import create_app

    def start(service: RetrievalService, api_key: str | None = None) -> ThreadServer:
        return ThreadServer(create_app(service, api_key=api_key))

    return start
