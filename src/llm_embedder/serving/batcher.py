"""One encoder worker that micro-batches concurrent requests, behind a bounded queue.

Why: a transformer forward pass over 32 short texts costs less than 32 separate ones, so 64 clients that each send
one query are served faster by a few batched calls than by 64 separate ones. Every request (from the event loop or
any thread) is put on one queue; a single worker thread takes the first waiting request, then everything else
already waiting (up to ``max_batch_texts`` texts, without waiting for more - under load the queue refills while the
encoder runs, so batches grow by themselves and an idle server adds no delay), groups it by ``(task, side)`` and
makes ONE encoder call per group. The encoder runs only in that thread, so the event loop never blocks on it and the
model is never called from two threads at once.

What follows the encoder can be batched too: a request may carry a :class:`Then` (for a search: the store query),
and the requests of one batch whose ``Then`` has the same ``key`` are finished by ONE ``Then.run`` call in the
worker (one ``search_many`` for all the searches of a batch instead of one store call, lock and SQL query each).

Results reach asyncio callers (:meth:`MicroBatcher.run`) with one wake-up of their event loop per batch, not per
request, and never through a thread pool: a request costs the server no thread hop.

The queue is bounded: past ``max_queue`` waiting requests, :meth:`MicroBatcher.submit` raises :class:`Overloaded`
at once (the HTTP layer answers 429 with ``Retry-After``) instead of letting latency and memory grow without limit.
``max_batch_texts=1`` gives one-request-one-encode, the baseline that ``benchmarks/serve.py`` compares against.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class Then:
    """Work done in the encoder thread with a request's vectors; requests of one batch with equal ``key`` share it.

    ``run([(vectors, arg), ...])`` gets the vectors and ``arg`` of each such request, in arrival order, and returns
    one result per request (what its future resolves to). An exception fails those requests only.
    """

    key: Hashable
    run: Callable[[list[tuple[np.ndarray, Any]]], list[Any]]
    arg: Any = None


@dataclass
class _Request:
    texts: list[str]
    task: str
    side: str
    then: Then | None = None
    #: set for asyncio callers: the future belongs to this loop and is resolved on it
    loop: asyncio.AbstractEventLoop | None = None
    future: Any = field(default_factory=Future)


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

    def _put(self, request: _Request) -> None:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(self.max_queue)
        self._queue.put(request)

    def submit(self, texts: Sequence[str], task: str, side: str, *, then: Then | None = None) -> Future:
        """Queue one request; raises :class:`Overloaded` when ``max_queue`` requests are already waiting."""
        request = _Request(list(texts), task, side, then)
        self._put(request)
        return request.future

    def encode(self, texts: Sequence[str], task: str, side: str) -> np.ndarray:
        """:meth:`submit` and wait for the result (errors of the encoder are raised here)."""
        return self.submit(texts, task, side).result()

    async def run(self, texts: Sequence[str], task: str, side: str, *, then: Then | None = None) -> Any:
        """:meth:`submit` from a coroutine: the vectors (or ``then``'s result), awaited without a thread.

        :class:`Overloaded` is raised at once, as from :meth:`submit`.
        """
        loop = asyncio.get_running_loop()
        request = _Request(list(texts), task, side, then, loop, loop.create_future())
        self._put(request)
        return await request.future

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
            self._deliver(self._process(batch))
            if stop:
                return

    def _process(self, batch: list[_Request]) -> list[tuple[_Request, Any, BaseException | None]]:
        """Encode each ``(task, side)`` group, then run the ``Then`` groups: ``(request, result, error)`` each."""
        groups: dict[tuple[str, str], list[_Request]] = {}
        for request in batch:
            groups.setdefault((request.task, request.side), []).append(request)
        done: list[tuple[_Request, Any, BaseException | None]] = []
        finishing: dict[Hashable, list[tuple[_Request, np.ndarray]]] = {}
        for (task, side), requests in groups.items():
            texts = [t for r in requests for t in r.texts]
            start = time.perf_counter()
            try:
                vectors = self._encode(texts, task, side) if texts else np.zeros((0, 0), "f4")
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller, never lost
                done += [(r, None, exc) for r in requests]
                continue
            if self._observer is not None:
                self._observer(task, side, len(texts), len(requests), time.perf_counter() - start)
            offset = 0
            for r in requests:
                n = len(r.texts)
                mine = vectors[offset : offset + n]
                offset += n
                if r.then is None:
                    done.append((r, mine, None))
                else:
                    finishing.setdefault(r.then.key, []).append((r, mine))
        for items in finishing.values():
            try:
                results = items[0][0].then.run([(v, r.then.arg) for r, v in items])  # type: ignore[union-attr]
                done += [(r, result, None) for (r, _), result in zip(items, results, strict=True)]
            except BaseException as exc:  # noqa: BLE001 - as above
                done += [(r, None, exc) for r, _ in items]
        return done

    @staticmethod
    def _deliver(done: list[tuple[_Request, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, BaseException | None]]] = {}
        for request, result, error in done:
            if request.loop is None:
                if error is None:
                    request.future.set_result(result)
                else:
                    request.future.set_exception(error)
            else:
                by_loop.setdefault(request.loop, []).append((request.future, result, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _settle(items: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """Resolve asyncio futures on their own loop (a cancelled one - the client went away - is skipped)."""
    for future, result, error in items:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
