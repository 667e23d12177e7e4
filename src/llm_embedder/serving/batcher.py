"""One encoder worker that micro-batches concurrent requests, behind a bounded queue.

Why: a transformer forward pass over 32 short texts costs little more than over one, so 64 clients that each send
one query are served far faster by a few batched calls than by 64 separate ones. Every request (from any thread of
the web server) is put on one queue; a single worker thread takes the first waiting request, then everything else
already waiting (up to ``max_batch_texts`` texts, without waiting for more - under load the queue refills while the
encoder runs, so batches grow by themselves and an idle server adds no delay), groups it by ``(task, side)`` and
makes ONE encoder call per group. The encoder runs only in that thread, so the event loop never blocks on it and the
model is never called from two threads at once.

The queue is bounded: past ``max_queue`` waiting requests, :meth:`MicroBatcher.submit` raises :class:`Overloaded`
at once (the HTTP layer answers 429 with ``Retry-After``) instead of letting latency and memory grow without limit.
``max_batch_texts=1`` gives one-request-one-encode, the baseline that ``benchmarks/serve.py`` compares against.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

#: ``encode(texts, task, side) -> float32 (n, dim)``
EncodeFn = Callable[[list[str], str, str], np.ndarray]
#: called after each encoder call with ``(task, side, number of texts, number of requests, seconds)``
BatchObserver = Callable[[str, str, int, int, float], None]


class Overloaded(Exception):
    """The encoder queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, depth: int, retry_after: int = 1) -> None:
        self.depth = depth
        self.retry_after = retry_after
        super().__init__(f"the encoder queue is full ({depth} requests waiting)")


@dataclass
class _Request:
    texts: list[str]
    task: str
    side: str
    future: Future = field(default_factory=Future)


_STOP = object()


class MicroBatcher:
    """Submit ``(texts, task, side)``; get a future of the vectors. See the module docstring."""

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_queue: int = 256,
        max_batch_texts: int = 64,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_queue < 1 or max_batch_texts < 1:
            raise ValueError("max_queue and max_batch_texts must be positive")
        self._encode = encode
        self.max_queue = max_queue
        self.max_batch_texts = max_batch_texts
        self._observer = observer
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.BoundedSemaphore(max_queue)
        self._pending: _Request | None = None
        self._thread = threading.Thread(target=self._run, name="encoder", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the encoder (not counting the batch being encoded)."""
        return self._queue.qsize()

    def submit(self, texts: Sequence[str], task: str, side: str) -> Future:
        """Queue one request; raises :class:`Overloaded` when ``max_queue`` requests are already waiting."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded(self.max_queue)
        request = _Request(list(texts), task, side)
        self._queue.put(request)
        return request.future

    def encode(self, texts: Sequence[str], task: str, side: str) -> np.ndarray:
        """:meth:`submit` and wait for the result (errors of the encoder are raised here)."""
        return self.submit(texts, task, side).result()

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ worker
    def _take(self, block: bool) -> _Request | object | None:
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return None
        if item is not _STOP:
            self._slots.release()
        return item

    def _run(self) -> None:
        while True:
            first = self._pending or self._take(block=True)
            self._pending = None
            if first is _STOP:
                return
            batch = [first]
            texts = len(first.texts)
            stop = False
            while texts < self.max_batch_texts:
                item = self._take(block=False)
                if item is None:
                    break
                if item is _STOP:
                    stop = True
                    break
                if texts + len(item.texts) > self.max_batch_texts:
                    self._pending = item  # first of the next batch, keeps arrival order
                    break
                batch.append(item)
                texts += len(item.texts)
            self._encode_batch(batch)
            if stop:
                return

    def _encode_batch(self, batch: list[_Request]) -> None:
        groups: dict[tuple[str, str], list[_Request]] = {}
        for request in batch:
            groups.setdefault((request.task, request.side), []).append(request)
        for (task, side), requests in groups.items():
            texts = [t for r in requests for t in r.texts]
            start = time.perf_counter()
            try:
                vectors = self._encode(texts, task, side) if texts else None
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller, never lost
                for r in requests:
                    r.future.set_exception(exc)
                continue
            if self._observer is not None:
                self._observer(task, side, len(texts), len(requests), time.perf_counter() - start)
            offset = 0
            for r in requests:
                n = len(r.texts)
                r.future.set_result(vectors[offset : offset + n] if vectors is not None else np.zeros((0, 0), "f4"))
                offset += n
