"""Prometheus metrics of one service (its own registry, so two services in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Requests, encoder queue depth, batch sizes, encode and search latency per task."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llm_embedder_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "llm_embedder_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "llm_embedder_encoder_queue_depth", "requests waiting for the encoder", registry=self.registry
        )
        self.rejected = Counter(
            "llm_embedder_encoder_rejected", "requests refused because the encoder queue was full",
            registry=self.registry,
        )  # fmt: skip
        self.batch_texts = Histogram(
            "llm_embedder_encoder_batch_texts", "texts per encoder call", ["task", "side"], buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "llm_embedder_encoder_batch_requests", "requests sharing one encoder call", ["task", "side"],
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.encode_seconds = Histogram(
            "llm_embedder_encode_seconds", "encoder call latency", ["task", "side"], buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.search_seconds = Histogram(
            "llm_embedder_search_seconds", "store search latency", ["task", "mode"], buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip

    def observe_batch(self, task: str, side: str, texts: int, requests: int, seconds: float) -> None:
        self.batch_texts.labels(task, side).observe(texts)
        self.batch_requests.labels(task, side).observe(requests)
        self.encode_seconds.labels(task, side).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
