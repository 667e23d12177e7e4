"""The on-disk format of index folders: crash-safe folder writes and the manifest.

An index folder holds everything ``llm-embedder search`` needs to answer queries later::

    INDEX_DIR/
      manifest.json   written LAST: format, counts, encoder/task/key template, corpus fingerprint, file checksums
      dense.faiss     the faiss index (inner product on L2-normalised vectors = cosine), see retrieval/index.py
      ids.npy         int64: faiss position -> corpus row
      offsets.npy     int64: corpus row -> byte offset of its line in the corpus file (see retrieval/corpus_file.py)
      bm25/           optional BM25 index (bm25s files)

Why the care: a corpus of millions of rows takes hours to encode, and a job killed while writing must never leave
a folder that loads as if it were complete. Folders are therefore written into a hidden temporary sibling and
renamed over the target only when every file and the manifest are on disk (:func:`atomic_folder`); a folder
without a manifest, or whose files do not match the manifest, is refused with one clear line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.utils.files import atomic_write

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "llm-embedder-index"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def recover_folder(target: str | os.PathLike[str]) -> None:
    """Finish an interrupted swap and drop temporary folders of dead writers.

    Replacing an existing folder takes two renames (old away, new in); a kill between them leaves the previous
    complete version under ``.NAME.old-*``. It is moved back so the target always holds a complete version.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for tmp in _leftovers(target, "tmp"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    olds = _leftovers(target, "old")
    if not target.exists():
        for old in reversed(olds):
            pid = old.name.rsplit("-", 2)[-2]
            if (old / MANIFEST_NAME).is_file() and not (pid.isdigit() and _pid_alive(int(pid))):
                os.rename(old, target)
                olds.remove(old)
                break
    for old in olds:
        pid = old.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    On any error (or a kill) the target keeps its previous content: a killed build leaves either no folder or the
    previous complete one, never a half-written index.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{tag}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as handle:
        while True:
            size = 1 << 20 if left is None else min(1 << 20, left)
            if size == 0:
                break
            chunk = handle.read(size)
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of ``folder`` into ``manifest["files"]`` and write ``manifest.json`` (call it last)."""
    folder = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(folder).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "kind": MANIFEST_KIND,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    with atomic_write(folder / MANIFEST_NAME) as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder / MANIFEST_NAME, 0o666 & ~umask)  # readable like the other index files (mkstemp made it 0600)
    return manifest


def read_manifest(folder: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Read and check an index folder's manifest: every listed file present with its size (and sha256 if ``verify``)."""
    folder = Path(folder)
    recover_folder(folder)
    if not folder.exists():
        raise UserError(f"index folder {folder} not found", hint="build one with `llm-embedder index`")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, expected an index folder")
    file = folder / MANIFEST_NAME
    if not file.is_file():
        raise UserError(
            f"{folder} is not a complete index (no {MANIFEST_NAME})",
            hint="the build was interrupted or this is not an index folder; rerun `llm-embedder index`",
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot parse the index manifest ({exc})", hint="rebuild the index") from None
    if manifest.get("kind") != MANIFEST_KIND:
        raise UserError(f"{file}: not an llm-embedder index manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{file}: index format {manifest.get('format_version')} is newer than this llm-embedder")
    for rel, info in (manifest.get("files") or {}).items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{folder}: index file {rel} is missing", hint="rebuild the index")
        if path.stat().st_size != info.get("bytes"):
            raise UserError(
                f"{folder}: index file {rel} has {path.stat().st_size} bytes, the manifest says {info.get('bytes')}",
                hint="the folder was modified after it was written; rebuild the index",
            )
        if verify and sha256_file(path) != info.get("sha256"):
            raise UserError(f"{folder}: checksum of {rel} does not match the manifest", hint="rebuild the index")
    return manifest
