"""FlagEmbedding's dense embedder (`FlagModel`) for the cross-check, loaded without the rest of its package.

`import FlagEmbedding` also imports every reranker, and one of them (MiniCPM) imports
`transformers.modeling_attn_mask_utils`, which transformers 5.24 removed. The cross-check only needs the
encoder-only embedder, whose own imports are fine on every transformers 5.x, so we load that module and the
modules it needs straight from the installed package folder, skipping the package `__init__` files that pull in
the rerankers. This keeps the check meaningful on the newest transformers instead of deleting it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


def load_flag_model(monkeypatch) -> type:
    """FlagEmbedding's `FlagModel` (encoder-only `BaseEmbedder`), imported without the reranker modules.

    Package modules whose `__init__` would import the rerankers are replaced, for this test only (monkeypatch
    restores `sys.modules`), by empty namespace modules that point at the real folders.
    """
    spec = importlib.util.find_spec("FlagEmbedding")
    assert spec is not None and spec.submodule_search_locations, "FlagEmbedding is not installed (dev extra)"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in list(sys.modules):
        if name == "FlagEmbedding" or name.startswith("FlagEmbedding."):
            monkeypatch.delitem(sys.modules, name)
    for package in ("", ".inference", ".inference.embedder", ".inference.embedder.encoder_only"):
        module = types.ModuleType("FlagEmbedding" + package)
        module.__path__ = [str(root.joinpath(*package.split(".")[1:]))]
        monkeypatch.setitem(sys.modules, module.__name__, module)
    base = importlib.import_module("FlagEmbedding.inference.embedder.encoder_only.base")
    return base.BaseEmbedder
