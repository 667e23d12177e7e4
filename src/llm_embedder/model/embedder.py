"""``LLMEmbedder``: one bi-encoder for every retrieval need of an LLM, called with a task name.

Built on sentence-transformers: the network is a ``SentenceTransformer`` (transformer + pooling + normalisation),
the task instructions travel with the weights as sentence-transformers prompts (``qa_query``, ``qa_key``, ...),
and the full task table is saved beside them in ``llm_embedder.json``. So a saved folder loads in plain
sentence-transformers (``encode(t, prompt_name="qa_query")``) and in FlagEmbedding with identical vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llm_embedder.errors import UserError
from llm_embedder.model.loading import resolve_model_path
from llm_embedder.tasks.registry import TASKS, TaskRegistry
from llm_embedder.tasks.spec import TaskSpec
from llm_embedder.utils.files import write_json

CONFIG_NAME = "llm_embedder.json"
Side = Literal["query", "key"]
Dtype = Literal["fp32", "bf16", "fp16"]
Backend = Literal["torch", "onnx", "onnx-int8"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: show a progress bar by default from this many texts on
PROGRESS_THRESHOLD = 1000


def _build_sentence_transformer(path: str, device: str | None, pooling: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    if (Path(path) / "modules.json").is_file():
        model = SentenceTransformer(path, device=device, local_files_only=True)
        if pooling is not None:
            _set_pooling(model, pooling)
        return model
    # A plain Hugging Face encoder folder (e.g. BAAI/llm-embedder without sentence-transformers files):
    # llm-embedder style models use the CLS token, so that is the default here.
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = Transformer(path)
    pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling or "cls")
    return SentenceTransformer(modules=[transformer, pool, Normalize()], device=device)


def _set_pooling(model: Any, pooling: str) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            model._modules[str(index)] = Pooling(module.get_embedding_dimension(), pooling_mode=pooling)
            return
    raise UserError("this model has no pooling module to configure")


class LLMEmbedder:
    """A unified embedder: ``encode_queries(texts, task="qa")`` / ``encode_keys(texts, task="qa")``.

    Args:
        model: a local folder or a Hugging Face hub id (e.g. ``BAAI/llm-embedder``); ``None`` loads the embedded
            default (all-MiniLM-L6-v2, offline).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
        dtype: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` weights for the torch backend.
        backend: ``"torch"``; ``"onnx"`` / ``"onnx-int8"`` for the fast CPU path (ONNX Runtime, exported from
            the same weights once and cached beside them).
        query_max_length / key_max_length: token budgets per side (default: the model's max sequence length).
        batch_size: texts per forward pass.
        use_instructions: prepend the task instructions (on by default; off for the "w/o instruction" ablation).
        pooling: override the model's pooling ("cls", "mean", ...); by default as configured by the model.
        tasks: a task registry to use instead of the global one (tasks saved with the model are added to it).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        dtype: Dtype = "fp32",
        backend: Backend = "torch",
        query_max_length: int | None = None,
        key_max_length: int | None = None,
        batch_size: int = 32,
        use_instructions: bool | None = None,
        pooling: str | None = None,
        tasks: TaskRegistry | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise UserError(f"unknown dtype {dtype!r}", hint=f"choose one of {', '.join(_DTYPES)}")
        if backend not in ("torch", "onnx", "onnx-int8"):
            raise UserError(f"unknown backend {backend!r}", hint="choose torch, onnx or onnx-int8")
        self.source = str(model) if model is not None else "default"
        self.path = resolve_model_path(model, what="encoder")
        self.tasks = (tasks if tasks is not None else TASKS).copy()
        saved = self._read_config(self.path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = _build_sentence_transformer(self.path, device, pooling)
        self.model.eval()
        self.dtype = dtype
        if dtype != "fp32":
            self.model.to(_DTYPES[dtype])
        self._restore_tasks(saved)
        default_len = int(self.model.max_seq_length or 512)
        self.query_max_length = int(query_max_length or saved.get("query_max_length") or default_len)
        self.key_max_length = int(key_max_length or saved.get("key_max_length") or default_len)
        self.batch_size = batch_size
        self.use_instructions = bool(saved.get("use_instructions", True) if use_instructions is None else use_instructions)
        self.backend = backend
        self._fast: Any = None
        self._pool: Any = None
        if backend != "torch":
            from llm_embedder.model.onnx_backend import OnnxEncoder

            self._fast = OnnxEncoder.from_embedder(self, quantize=backend == "onnx-int8")

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _read_config(path: str) -> dict[str, Any]:
        file = Path(path) / CONFIG_NAME
        if not file.is_file():
            return {}
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: cannot parse the saved llm-embedder config: {exc}") from None

    def _restore_tasks(self, saved: dict[str, Any]) -> None:
        """Tasks saved with the model win; bare ``<task>_query``/``<task>_key`` prompts become tasks too."""
        if saved.get("tasks"):
            self.tasks.update_from_mapping(saved["tasks"], source=str(Path(self.path) / CONFIG_NAME))
        prompts = dict(getattr(self.model, "prompts", {}) or {})
        for name, text in prompts.items():
            if not name.endswith("_query"):
                continue
            task = name[: -len("_query")]
            key_text = prompts.get(f"{task}_key")
            if task and key_text is not None and task not in self.tasks:
                self.tasks.register(TaskSpec(name=task, query_instruction=text, key_instruction=key_text))

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def task(self, name: str) -> TaskSpec:
        return self.tasks.get(name)

    def instruction(self, task: str, side: Side) -> str:
        """The text prepended to inputs of ``task`` on ``side`` (empty when instructions are off)."""
        spec = self.tasks.get(task)
        if not self.use_instructions:
            return ""
        if side == "query":
            return spec.query_instruction
        if side == "key":
            return spec.key_instruction
        raise UserError(f"unknown side {side!r}", hint="choose query or key")

    def max_length(self, side: Side) -> int:
        return self.query_max_length if side == "query" else self.key_max_length

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts: Sequence[str] | str,
        *,
        task: str = "qa",
        side: Side = "query",
        batch_size: int | None = None,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        devices: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` as ``side`` of ``task``: float32 ``(n, dim)``, L2-normalised, input order kept.

        Batches are cut from length-sorted inputs (little padding). ``devices`` (e.g. ``["cuda:0", "cuda:1"]`` or
        ``["cpu"] * 4``) spreads a large input over several processes; the output order is preserved.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"input {i} is a {type(text).__name__}, expected a string")
        prefix = self.instruction(task, side)
        length = int(max_length or self.max_length(side))
        batch = int(batch_size or self.batch_size)
        if show_progress_bar is None:
            show_progress_bar = len(texts) >= PROGRESS_THRESHOLD
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._fast is not None:
            out = self._fast.encode([prefix + t for t in texts], batch_size=batch, max_length=length,
                                    show_progress_bar=show_progress_bar)
            return np.ascontiguousarray(out, dtype=np.float32)
        kwargs: dict[str, Any] = {}
        if length != self.model.max_seq_length:
            kwargs["processing_kwargs"] = {"text": {"max_length": length, "truncation": True}}
        if devices:
            kwargs["device"] = list(devices)
        elif self._pool is not None:
            kwargs["pool"] = self._pool
        with torch.inference_mode():
            out = self.model.encode(
                texts,
                prompt=prefix,
                batch_size=batch,
                show_progress_bar=show_progress_bar,
                normalize_embeddings=True,
                convert_to_numpy=True,
                **kwargs,
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str] | str, task: str = "qa", **kwargs: Any) -> np.ndarray:
        """Embed queries of ``task`` (the task's query instruction is prepended)."""
        return self.encode(texts, task=task, side="query", **kwargs)

    def encode_keys(self, texts: Sequence[str] | str, task: str = "qa", **kwargs: Any) -> np.ndarray:
        """Embed keys (passages, turns, chunks, examples, tools) of ``task``."""
        return self.encode(texts, task=task, side="key", **kwargs)

    def start_pool(self, devices: Sequence[str]) -> None:
        """Keep worker processes on ``devices`` for repeated large encodes (stop with :meth:`stop_pool`)."""
        self.stop_pool()
        self._pool = self.model.start_multi_process_pool(list(devices))

    def stop_pool(self) -> None:
        if self._pool is not None:
            self.model.stop_multi_process_pool(self._pool)
            self._pool = None

    # ------------------------------------------------------------------ persistence
    def prompts(self) -> dict[str, str]:
        """sentence-transformers prompts for every task: ``{"qa_query": ..., "qa_key": ...}``."""
        out: dict[str, str] = {}
        for spec in self.tasks.specs():
            out[spec.query_prompt_name] = spec.query_instruction if self.use_instructions else ""
            out[spec.key_prompt_name] = spec.key_instruction if self.use_instructions else ""
        return out

    def save(self, path: str | os.PathLike[str], *, model_card: str | None = None) -> str:
        """Write a sentence-transformers folder that carries the task instructions as prompts."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self.model
        model.prompts = {**dict(getattr(model, "prompts", {}) or {}), **self.prompts()}
        if self.dtype != "fp32":
            model.to(torch.float32)
        try:
            model.max_seq_length = max(self.query_max_length, self.key_max_length)
            model.save(str(path))
        finally:
            if self.dtype != "fp32":
                model.to(_DTYPES[self.dtype])
        write_json(
            path / CONFIG_NAME,
            {
                "format_version": 1,
                "query_max_length": self.query_max_length,
                "key_max_length": self.key_max_length,
                "use_instructions": self.use_instructions,
                "tasks": self.tasks.to_dict(),
            },
        )
        if model_card is not None:
            (path / "README.md").write_text(model_card, encoding="utf-8")
        return str(path)

    def __repr__(self) -> str:
        return f"LLMEmbedder(model={self.source!r}, dim={self.dim}, backend={self.backend!r}, dtype={self.dtype!r})"
