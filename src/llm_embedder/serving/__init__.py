"""Serving retrieval to live LLM applications: the in-process service, its HTTP API and a Python client.

``serving`` sits beside ``evaluation`` and ``reward``: it uses ``retrieval`` (the store), ``model`` (the embedder),
``tasks``, ``data`` and the prompt layer, never ``evaluation``, ``pipeline``, ``training`` or ``cli``. The FastAPI
app and the httpx client are imported from their modules (``serving.app``, ``serving.client``), so the in-process
service needs neither.
"""

from __future__ import annotations

from llm_embedder.serving.batcher import MicroBatcher, Overloaded
from llm_embedder.serving.service import Limits, RetrievalService, open_service

__all__ = ["Limits", "MicroBatcher", "Overloaded", "RetrievalService", "open_service"]
