"""A real ``milvus-lite server`` on a free 127.0.0.1 port for the whole session, talked to over gRPC as a cluster
would be; started on first use and killed at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from net_helpers import free_port


class MilvusServer:
    """A ``milvus-lite server`` subprocess bound to 127.0.0.1 (restartable on the same data folder and port)."""

    def __init__(self, data_dir: Path) -> None:
        exe = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or shutil.which("milvus-lite")
        if exe is None:
            pytest.skip("milvus-lite is not installed (extra `milvus`)")
        self.exe = exe
        self.data_dir = data_dir
        self.port = free_port()
        self.uri = f"milvus://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "milvus-lite.log"

    def start(self) -> None:
        cmd = [self.exe, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("milvus-lite server did not start within 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    pytest.importorskip("pymilvus")
    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
