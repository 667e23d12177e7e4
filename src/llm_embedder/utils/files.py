"""Atomic writes and work-file locks: a killed job never leaves a half-written file that later loads as if it were
complete, and two jobs never write the same output at once."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from llm_embedder.errors import UserError


def _umask() -> int:
    """The process umask. Linux reports it in /proc (read-only, safe with the server's threads); elsewhere it can
    only be read by setting it, so it is put straight back."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask (0644 by default)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600 files; a report or model file must be readable as the user's umask says
        os.fchmod(fd, _open_mode())
        with open(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(target)  # a failed write (disk full) names no file; say which output it was
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as pretty JSON."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


#: descriptors of the locks this process holds; closed in forked children (see _drop_locks_in_child)
_HELD_LOCKS: set[int] = set()


def _drop_locks_in_child() -> None:
    """A forked child (a DataLoader worker, a multiprocessing worker) inherits the lock's open file description; if it
    outlived a killed parent it would keep the lock held and refuse the rerun. Children never own our locks: close
    their copies (the parent's descriptor keeps the lock)."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


#: how long a lock whose recorded holder is dead may stay held (by a child forked an instant before the kill)
DEAD_HOLDER_GRACE_SECONDS = 10.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _flock_unless_alive(fd: int) -> None:
    """``flock`` without blocking, except while the recorded holder is dead.

    A child forked an instant before its parent was killed holds the inherited lock until it runs its at-fork handler
    (which closes it); that takes a scheduler slice, so a rerun started right after the kill waits for it briefly
    instead of being refused by a run that no longer exists.
    """
    deadline = time.monotonic() + DEAD_HOLDER_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            if holder.isdigit() and _pid_alive(int(holder)):
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def exclusive_lock(
    path: str | os.PathLike[str], *, what: str = "output", busy: str | None = None, hint: str | None = None
) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (a ``<path>.lock`` file beside it) for the whole block.

    Two jobs writing the same output (two ``score`` runs with one ``-o``, two ``index`` runs into one folder) would
    interleave their partial files and lose records while both report success, so the second one is refused with one
    line instead. The lock is an OS-level ``flock``: the kernel releases it when the holder exits, even on kill -9, so
    a crashed run never leaves a stale lock behind (after kill -9 the ``.lock`` file stays, only as a handle the next
    run takes over). A finished run removes it, under the lock; a waiter that locked the removed file opens it again.
    ``busy`` and ``hint`` replace the refusal's wording (default: "another run is writing this ``what``").
    """
    target = Path(path)
    lock_path = target.with_name(target.name + ".lock")
    while True:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _open_mode())
        except OSError as exc:
            raise UserError(
                f"{lock_path}: cannot create the lock file for {what}: {exc.strerror}",
                hint="choose an output path in a folder you can write to",
            ) from None
        try:
            _flock_unless_alive(fd)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"{target}: {busy} (pid {holder})"
                if busy
                else f"{target}: another run (pid {holder}) is writing this {what}",
                hint=hint or "wait for it to finish, or choose another output path",
            ) from None
        # The holder before us removes the lock file when it finishes; if we locked that removed file, the lock
        # protects nothing: open the current one again.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        # remove the file while still holding the lock (no lock file is left beside the outputs), then release
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # closing the descriptor releases the flock
