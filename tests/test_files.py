"""utils.files: atomic writes that respect the umask, and the one-writer-per-output lock."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from llm_embedder.errors import UserError
from llm_embedder.utils.files import atomic_write, exclusive_lock, write_json


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    """Drill: every file written through atomic_write was 0600 whatever the umask (tempfile's default), so
    colleagues could not read a shared model, report or summary."""
    umask(mask)
    write_json(tmp_path / "summary.json", {"a": 1})
    with atomic_write(tmp_path / "report.md") as handle:
        handle.write("# report\n")
    for name in ("summary.json", "report.md"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode


def test_a_second_writer_is_refused_in_one_line(tmp_path):
    out = tmp_path / "scored.jsonl"
    with exclusive_lock(out, what="scored output"):
        with pytest.raises(UserError) as info, exclusive_lock(out, what="scored output"):
            pass
    assert str(info.value) == (
        f"{out}: another run (pid {os.getpid()}) is writing this scored output "
        "(wait for it to finish, or choose another output path)"
    )
    with exclusive_lock(out):  # released: the next run takes it
        pass
    assert not (tmp_path / "scored.jsonl.lock").exists()


def test_a_forked_child_never_keeps_the_lock_of_a_killed_run(tmp_path):
    """A forked worker (DataLoader, multiprocessing) that outlives a run killed with SIGKILL must not hold the run's
    lock: the rerun would be refused as a second writer for as long as the orphan lives."""
    out = tmp_path / "run"
    orphan = tmp_path / "orphan.pid"
    code = f"""
import os, signal, time
from llm_embedder.utils.files import exclusive_lock
with exclusive_lock({str(out)!r}, what="pipeline run folder"):
    if os.fork() == 0:  # a worker that lingers after its parent dies (it says so once it runs)
        with open({str(orphan)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename({str(orphan)!r} + ".tmp", {str(orphan)!r})
        time.sleep(60)
        os._exit(0)
    while not os.path.exists({str(orphan)!r}):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)  # the run is killed while it holds the lock
"""
    # no pipes: the orphan would hold them open and run() would wait for it
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL
    child = int(orphan.read_text())
    try:
        os.kill(child, 0)  # the orphan is alive
        with exclusive_lock(out, what="pipeline run folder"):  # and the rerun still gets the lock
            pass
    finally:
        os.kill(child, signal.SIGKILL)
