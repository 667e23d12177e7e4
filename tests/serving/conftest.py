"""Fixtures of the service tests: one encoder for the session, a fresh service per test, servers on free ports."""

from __future__ import annotations

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


@pytest.fixture
def serve_app() -> Any:
    """``serve_app(service, api_key=None)``: a started :class:`ThreadServer` context."""
    from serve_helpers import ThreadServer

    from llm_embedder.serving.app import create_app

    def start(service: RetrievalService, api_key: str | None = None) -> Any:
        return ThreadServer(create_app(service, api_key=api_key))

    return start
