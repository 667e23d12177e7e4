"""Shared fixtures: the development data in ../shared/data and the bundled models (all offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LLM_EMBEDDER_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"development data not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def embedder():
    """The embedded default encoder (bundled all-MiniLM-L6-v2) on CPU, shared by the whole session."""
    from llm_embedder import LLMEmbedder

    return LLMEmbedder(device="cpu")


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, restored afterwards: the machine is shared, and one thread is much
    faster than two contended ones (modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
