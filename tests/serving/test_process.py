"""`llm-embedder serve` as a real process: kill -9 during a write burst loses no acknowledged write, a restart
serves the same data (the killed server's folder lock is gone with it), a second server on a served folder and a
non-loopback bind without an API key are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from net_helpers import free_port

from llm_embedder.retrieval.store import open_store
from llm_embedder.serving.service import MEMORY_COLLECTION


class ServerProcess:
    def __init__(self, data: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [sys.executable, "-m", "llm_embedder.cli.main", "serve", "--data-dir", str(data)]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), "--instructions", "on", *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


@pytest.fixture
def start_server():
    """``start_server(data, *extra)``: a :class:`ServerProcess`, killed at teardown if a failed test left it running."""
    started: list[ServerProcess] = []

    def start(data: Path, *extra: str) -> ServerProcess:
        started.append(ServerProcess(data, *extra))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)


def test_acknowledged_writes_survive_kill_9_and_restart(tmp_path, make_service, serve_app, start_server):
    data = tmp_path / "data"
    server = start_server(data)
    # a second server on the same folder is refused at once, in one line (it would not know the first's augment ids)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    second = subprocess.run(
        [sys.executable, "-m", "llm_embedder.cli.main", "serve", "--data-dir", str(data), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2
    assert second.stderr.startswith(f"llm-embedder serve: error: {data / 'service'}: this data folder is in use by ")
    assert f"(pid {server.process.pid})" in second.stderr and second.stderr.count("\n") == 1
    http = httpx.Client(base_url=server.url, timeout=30)
    http.post("/v1/collections", json={"name": "kb", "task": "qa"}).raise_for_status()
    acked_docs: list[str] = []
    acked_turns: dict[str, int] = {}
    acked_feedback: list[str] = []
    stop = threading.Event()

    def write_documents(worker: int) -> None:
        i = 0
        while not stop.is_set():
            ids = [f"w{worker}-{i}-{j}" for j in range(4)]
            docs = [{"id": d, "text": f"document {d} about topic {i % 7}"} for d in ids]
            try:
                response = http.post("/v1/collections/kb/documents", json={"documents": docs})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acked_docs.extend(response.json()["ids"])
            i += 1

    def write_turns(worker: int) -> None:
        conversation = f"conv{worker}"
        i = 0
        while not stop.is_set():
            turns = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
            try:
                response = http.post(f"/v1/conversations/{conversation}/turns", json={"turns": turns})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acked_turns[conversation] = response.json()["exchanges"]
            i += 1

    def augment_and_feed_back() -> None:
        # an augment over fewer than two documents is logged but never exported (it teaches no ranking), so this
        # thread starts once a few documents are acknowledged; before, an early augment made the test flaky
        while len(acked_docs) < 8 and not stop.is_set():
            time.sleep(0.01)
        while not stop.is_set():
            try:
                result = http.post("/v1/augment", json={"query": "topic 3", "sources": [{"collection": "kb"}]})
                if result.status_code != 200:
                    continue
                augment_id = result.json()["augment_id"]
                if http.post("/v1/feedback", json={"augment_id": augment_id, "answer": "yes"}).status_code == 200:
                    acked_feedback.append(augment_id)
            except httpx.HTTPError:
                return

    threads = [threading.Thread(target=write_documents, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=write_turns, args=(w,)) for w in range(2)]
    threads.append(threading.Thread(target=augment_and_feed_back))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked_docs) < 24 or len(acked_feedback) < 2 or len(acked_turns) < 2:
        assert time.monotonic() < deadline, "the write burst did not get going"
        time.sleep(0.02)
    server.kill9()  # in the middle of the burst
    stop.set()
    for t in threads:
        t.join(30)
    http.close()

    # straight from the store files: every acknowledged write is there, whole
    store = open_store(str(data / "store"))
    documents = store.collection("kb").get(acked_docs)
    assert [d.id if d else None for d in documents] == acked_docs
    assert [d.text for d in documents] == [f"document {i} about topic {int(i.split('-')[1]) % 7}" for i in acked_docs]
    memory = store.collection(MEMORY_COLLECTION)
    for conversation, exchanges in acked_turns.items():
        assert memory.count(scope=conversation) >= exchanges
        last = memory.get([str(exchanges - 1)], scope=conversation)[0]
        assert last.text == f"Speaker 1: question {exchanges - 1}\nSpeaker 2: answer {exchanges - 1}"
    store.close()

    # restart: a new server over the same folder (in this process, to keep the test short) serves the same data
    with serve_app(make_service(data)) as restarted, httpx.Client(base_url=restarted.url, timeout=30) as http:
        collections = http.get("/v1/collections").json()["collections"]
        assert collections[0]["name"] == "kb" and collections[0]["count"] >= len(acked_docs)
        hits = http.post("/v1/collections/kb/search", json={"query": "topic 3", "top_k": 3}).json()["hits"]
        assert len(hits) == 3
        exported = http.get("/v1/collections/kb/feedback").text.splitlines()
        assert set(acked_feedback) <= {json.loads(line)["query_id"] for line in exported}
        # the log takes new entries after the kill (a torn last line never swallows one)
        augment_id = http.post("/v1/augment", json={"query": "q", "sources": [{"collection": "kb"}]}).json()[
            "augment_id"
        ]
        assert http.post("/v1/feedback", json={"augment_id": augment_id, "answer": "a"}).status_code == 200
        assert len(http.get("/v1/collections/kb/feedback").text.splitlines()) == len(exported) + 1


def test_non_loopback_bind_needs_an_api_key(tmp_path, capsys, monkeypatch):
    from llm_embedder.cli.main import main

    monkeypatch.delenv("LLM_EMBEDDER_API_KEY", raising=False)
    assert main(["serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err == (
        "llm-embedder serve: error: --host 0.0.0.0 is not a loopback address and no API key is set (pass --api-key "
        "KEY (or set $LLM_EMBEDDER_API_KEY) to serve beyond this machine, or bind 127.0.0.1)\n"
    )
    assert not any(tmp_path.iterdir())  # refused before anything was loaded or written


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_addresses(host):
    from llm_embedder.cli.serve import is_loopback

    assert is_loopback(host)
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not support Windows (the extra skips it there)")
def test_the_serve_extra_gives_uvicorn_its_c_parser_and_event_loop():
    """`serve` leaves uvicorn's choice on "auto", which takes httptools and uvloop when they are installed: 0.3 ms less
    per request than h11 + asyncio (benchmarks/README.md, serve). This fails when the serve extra or the lock drops
    them, which would not break anything else."""
    import uvicorn
    from uvicorn.loops.auto import auto_loop_factory

    config = uvicorn.Config(app=lambda scope, receive, send: None, http="auto", loop="auto")
    config.load()
    assert config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    assert auto_loop_factory(use_subprocess=False).__module__.startswith("uvloop")
