"""The micro-batching encoder worker: concurrent requests share encoder calls; a full queue refuses at once."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from llm_embedder.serving.batcher import MicroBatcher, Overloaded, Then


class GatedEncoder:
    """Records its calls and blocks each one until ``gate`` is set; row i of a result is [i, i]."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str, str]] = []
        self.gate = threading.Event()

    def __call__(self, texts: list[str], task: str, side: str) -> np.ndarray:
        self.calls.append((list(texts), task, side))
        if not self.gate.wait(10):
            raise TimeoutError("gate never opened")
        return np.repeat(np.arange(len(texts), dtype=np.float32)[:, None], 2, axis=1)

    def wait_for_calls(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.calls) < n:
            assert time.monotonic() < deadline, "the worker never called the encoder"
            time.sleep(0.005)


def test_waiting_requests_share_one_call_per_task_and_side():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, max_queue=8)
    first = batcher.submit(["a"], "qa", "query")
    encoder.wait_for_calls(1)  # the worker is busy: the next requests wait together
    waiting = [batcher.submit([f"t{i}", f"u{i}"], "qa", "query") for i in range(3)]
    tool = batcher.submit(["k"], "tool", "key")
    encoder.gate.set()
    assert first.result().tolist() == [[0, 0]]
    assert [f.result()[:, 0].tolist() for f in waiting] == [[0, 1], [2, 3], [4, 5]]
    assert tool.result().tolist() == [[0, 0]]
    assert encoder.calls == [
        (["a"], "qa", "query"),
        (["t0", "u0", "t1", "u1", "t2", "u2"], "qa", "query"),
        (["k"], "tool", "key"),
    ]
    batcher.close()


def test_batches_stop_at_max_batch_texts_in_arrival_order():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, max_queue=8, max_batch_texts=3)
    batcher.submit(["x"], "qa", "query")
    encoder.wait_for_calls(1)
    futures = [batcher.submit([f"{i}a", f"{i}b"], "qa", "query") for i in range(3)]
    encoder.gate.set()
    for f in futures:
        f.result()
    assert [c[0] for c in encoder.calls] == [["x"], ["0a", "0b"], ["1a", "1b"], ["2a", "2b"]]
    batcher.close()


def test_a_full_queue_is_refused_at_once_and_recovers():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, max_queue=2)
    busy = batcher.submit(["a"], "qa", "query")
    encoder.wait_for_calls(1)
    queued = [batcher.submit(["b"], "qa", "query"), batcher.submit(["c"], "qa", "query")]
    assert batcher.depth == 2
    with pytest.raises(Overloaded, match=r"the encoder queue is full \(2 requests waiting\)") as info:
        batcher.submit(["d"], "qa", "query")
    assert info.value.retry_after == 1
    encoder.gate.set()
    busy.result()
    for f in queued:
        f.result()
    assert batcher.encode(["e"], "qa", "query").shape == (1, 2)
    batcher.close()


def test_encoder_errors_reach_every_caller_of_the_batch():
    def broken(texts, task, side):
        raise ValueError("boom")

    batcher = MicroBatcher(broken)
    with pytest.raises(ValueError, match="boom"):
        batcher.encode(["a"], "qa", "query")
    batcher.close()


def test_then_runs_once_per_key_in_the_worker_with_every_request_of_the_batch():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, max_queue=8)
    runs: list[tuple[str, list[tuple[list[float], str]], str]] = []

    def finish(name):
        def run(items):
            runs.append((name, [(v[:, 0].tolist(), arg) for v, arg in items], threading.current_thread().name))
            return [f"{name}:{arg}" for _, arg in items]

        return run

    busy = batcher.submit(["x"], "qa", "query")
    encoder.wait_for_calls(1)
    a1 = batcher.submit(["q1"], "qa", "query", then=Then("A", finish("A"), "one"))
    b1 = batcher.submit(["q2"], "qa", "query", then=Then("B", finish("B"), "two"))
    a2 = batcher.submit(["q3", "q4"], "qa", "query", then=Then("A", finish("A"), "three"))
    encoder.gate.set()
    assert busy.result().tolist() == [[0, 0]]
    assert [a1.result(), b1.result(), a2.result()] == ["A:one", "B:two", "A:three"]
    assert encoder.calls[1] == (["q1", "q2", "q3", "q4"], "qa", "query")  # one encoder call for all three
    assert runs == [("A", [([0.0], "one"), ([2.0, 3.0], "three")], "encoder"), ("B", [([1.0], "two")], "encoder")]
    batcher.close()


def test_a_failing_then_fails_only_its_own_requests():
    batcher = MicroBatcher(lambda texts, task, side: np.zeros((len(texts), 2), "f4"), max_queue=8)

    def broken(items):
        raise ValueError("no store")

    failing = batcher.submit(["a"], "qa", "query", then=Then("bad", broken))
    fine = batcher.submit(["b"], "qa", "query", then=Then("good", lambda items: ["ok"] * len(items)))
    with pytest.raises(ValueError, match="no store"):
        failing.result()
    assert fine.result() == "ok"
    batcher.close()


def test_coroutine_callers_get_results_and_errors_on_their_loop():
    def encode(texts, task, side):
        if "boom" in texts:
            raise ValueError("boom")
        return np.repeat(np.arange(len(texts), dtype=np.float32)[:, None], 2, axis=1)

    batcher = MicroBatcher(encode, max_queue=8)

    async def calls():
        vectors = await batcher.run(["a", "b"], "qa", "query")
        counted = await batcher.run(["c"], "qa", "query", then=Then("n", lambda items: [len(v) for v, _ in items]))
        with pytest.raises(ValueError, match="boom"):
            await batcher.run(["boom"], "qa", "query")
        return vectors.tolist(), counted

    assert asyncio.run(calls()) == ([[0, 0], [1, 1]], 1)
    batcher.close()


def test_a_coroutine_caller_is_refused_at_once_when_the_queue_is_full():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, max_queue=1)
    busy = batcher.submit(["a"], "qa", "query")
    encoder.wait_for_calls(1)
    queued = batcher.submit(["b"], "qa", "query")

    async def refused():
        with pytest.raises(Overloaded, match=r"\(1 requests waiting\)"):
            await batcher.run(["c"], "qa", "query")

    asyncio.run(refused())
    encoder.gate.set()
    busy.result()
    queued.result()
    batcher.close()
