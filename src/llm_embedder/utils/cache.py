"""The user cache folder of derived files: GGUF models de-quantised to safetensors, exported ONNX graphs.

Its own module so that ``model/`` (ONNX exports) and ``lm/`` (GGUF conversions) share it without importing each
other. ``$LLM_EMBEDDER_CACHE`` moves it (CI, a shared disk); the default follows the XDG habit of ``~/.cache``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models are kept (``$LLM_EMBEDDER_CACHE``, else ``~/.cache/llm_embedder``)."""
    root = os.environ.get("LLM_EMBEDDER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llm_embedder")
    return Path(root)
