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
from llm_embedder.model.truncation import clip_chars, input_overhead, keep_tail
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
#: hub models known to have been trained with the paper's task instructions (a folder saved by ``train`` says so in
#: ``llm_embedder.json`` instead). Any other model encodes plain text unless asked: instructions it never saw in
#: training cost the bundled MiniLM up to two thirds of its nDCG@10 (README, "Which models get the instructions").
INSTRUCTION_TRAINED_MODELS = frozenset({"BAAI/llm-embedder"})


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
            try:
                replacement = Pooling(
                    module.get_embedding_dimension(), pooling_mode=pooling, include_prompt=module.include_prompt
                )
            except ValueError as exc:
                raise UserError(f"unknown pooling {pooling!r}: {exc}", hint="e.g. cls, mean, max, lasttoken") from None
            model._modules[str(index)] = replacement
            return
    raise UserError("this model has no pooling module to configure")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UserError(f"batch size {batch_size!r} must be a positive integer")
    return batch_size


class LLMEmbedder:
    """A unified embedder: ``encode_queries(texts, task="qa")`` / ``encode_keys(texts, task="qa")``.

    Args:
        model: a local folder or a Hugging Face hub id (e.g. ``BAAI/llm-embedder``); ``None`` loads the embedded
            default (all-MiniLM-L6-v2, offline).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
        dtype: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` weights for the torch backend.
        backend: ``"torch"``; ``"onnx"`` / ``"onnx-int8"`` for the fast CPU path (ONNX Runtime, exported from
            the same weights once and cached in the user cache folder; see ``llm_embedder.model.onnx_backend``).
            ``devices`` (multi-process) applies to the torch backend only.
        query_max_length / key_max_length: token budgets per side (default: the model's max sequence length).
        batch_size: texts per forward pass.
        use_instructions: prepend the task instructions. Default (``None``): only for a model trained with them - a
            folder saved by ``llm-embedder train`` records it, and ``BAAI/llm-embedder`` is known to be - so an
            untrained base such as the embedded default encodes plain text, as it is meant to be used. ``True``
            forces them (e.g. to train a base with them), ``False`` turns them off (the "w/o instruction" ablation).
        pooling: override the model's pooling ("cls", "mean", ...); by default as configured by the model.
        tasks: a task registry to use instead of the global one (tasks saved with the model are added to it).
            Without it, tasks registered later with ``register_task`` are found too (and saved with the model).
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
        #: where names unknown to ``self.tasks`` are looked up: the live global table, unless a registry was given
        self._fallback_tasks = TASKS if tasks is None else None
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
        self.query_max_length = self.check_length(query_max_length or saved.get("query_max_length") or default_len)
        self.key_max_length = self.check_length(key_max_length or saved.get("key_max_length") or default_len)
        self.batch_size = _check_batch_size(batch_size)
        self.use_instructions = bool(
            self.trained_with_instructions(saved) if use_instructions is None else use_instructions
        )
        self.backend = backend
        #: tokens each instruction spends before the text (``text_budget``, ``query_max_tokens``), tokenised once
        self._overheads: dict[str, int] = {}
        self._fast: Any = None
        self._pool: Any = None
        if backend != "torch":
            from llm_embedder.model.onnx_backend import OnnxEncoder

            self._fast = OnnxEncoder.from_embedder(self, quantize=backend == "onnx-int8")

    # ------------------------------------------------------------------ configuration
    def trained_with_instructions(self, saved: dict[str, Any]) -> bool:
        """Whether this model learned the task instructions: its saved record, else the list of known hub models."""
        if "use_instructions" in saved:
            return bool(saved["use_instructions"])
        return self.source in INSTRUCTION_TRAINED_MODELS

    @property
    def fingerprint(self) -> str:
        """Identity of the vectors this embedder makes: same fingerprint, comparable vectors.

        Model source (resolved path or hub id), instruction use, pooling, dtype-independent. A store collection
        records it and refuses vectors with another one.
        """
        pooling = next(
            (getattr(m, "pooling_mode", None) or type(m).__name__ for m in self.model if "Pooling" in type(m).__name__),
            "none",
        )
        source = self.source
        path = Path(source).expanduser()
        if source != "default" and path.exists():
            source = str(path.resolve())
        return f"{source}|instructions={'on' if self.use_instructions else 'off'}|pooling={pooling}|dim={self.dim}"

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
    def position_limit(self) -> int | None:
        """The longest input the network can take (position embeddings), if the model says."""
        config = getattr(getattr(self.model[0], "auto_model", None), "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) and limit > 0 else None

    def check_length(self, length: Any) -> int:
        """``length`` as a token budget this model can read; a UserError otherwise."""
        # Past the position embeddings a BERT-style model fails deep inside torch; say it up front instead.
        try:
            value = int(length)
        except (TypeError, ValueError):
            raise UserError(f"max length {length!r} is not an integer") from None
        limit = self.position_limit
        if value <= 0 or (limit is not None and value > limit):
            raise UserError(
                f"max length {value} is out of range for this model",
                hint=f"use 1..{limit}" if limit else "use a positive number of tokens",
            )
        return value

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def task(self, name: str) -> TaskSpec:
        """The spec of ``name``; an unknown name is a one-line error listing the known tasks."""
        if name not in self.tasks and self._fallback_tasks is not None and name in self._fallback_tasks:
            return self._fallback_tasks.get(name)
        return self.tasks.get(name)

    def all_tasks(self) -> list[TaskSpec]:
        """Every task this embedder can encode for: its own, then global ones registered after it was built."""
        specs = self.tasks.specs()
        if self._fallback_tasks is not None:
            specs += [s for s in self._fallback_tasks.specs() if s.name not in self.tasks]
        return specs

    def instruction(self, task: str, side: Side) -> str:
        """The text prepended to inputs of ``task`` on ``side`` (empty when instructions are off)."""
        spec = self.task(task)
        if not self.use_instructions:
            return ""
        if side == "query":
            return spec.query_instruction
        if side == "key":
            return spec.key_instruction
        raise UserError(f"unknown side {side!r}", hint="choose query or key")

    def max_length(self, side: Side, task: str | None = None) -> int:
        """The token budget of ``side``; for the queries of a ``task`` with ``query_max_tokens``, at most that many
        tokens of text plus what its instruction and the special tokens take."""
        if side != "query":
            return self.key_max_length
        tokens = self.task(task).query_max_tokens if task is not None else None
        if tokens is None:
            return self.query_max_length
        return min(self.query_max_length, tokens + self._overhead(self.instruction(task, side)))

    def text_budget(self, task: str, side: Side, max_length: int | None = None) -> int:
        """Tokens of TEXT a ``task`` input of ``side`` may keep in ``max_length`` tokens (default: its budget), after
        its instruction and the special tokens: where a cut from the left (``keep_tail``) must stop."""
        length = max_length or self.max_length(side, task)
        return max(0, length - self._overhead(self.instruction(task, side)))

    def _overhead(self, prefix: str) -> int:
        """Tokens an input with instruction ``prefix`` spends before its text, tokenised once per instruction."""
        if prefix not in self._overheads:
            self._overheads[prefix] = input_overhead(self.model.tokenizer, prefix)
        return self._overheads[prefix]

    def fit_texts(self, texts: list[str], task: str, side: Side, max_length: int | None = None) -> list[str]:
        """``texts`` cut the way ``task`` wants for ``max_length`` tokens (default: the side's budget).

        Only a task with ``query_truncation: left`` changes anything: its queries keep their last tokens and the
        instruction stays whole (:mod:`llm_embedder.model.truncation`). Everything else is cut from the right by
        the tokenizer as usual. The training collator calls this too, so training and retrieval see one input.
        """
        if side != "query" or self.task(task).query_truncation != "left":
            return texts
        return keep_tail(texts, self.model.tokenizer, self.text_budget(task, side, max_length))

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
        ``["cpu"] * 4``) spreads a large input over several processes (torch backend); the output order is
        preserved. A progress bar is shown from :data:`PROGRESS_THRESHOLD` texts on unless told otherwise.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"input {i} is a {type(text).__name__}, expected a string")
        prefix = self.instruction(task, side)
        length = self.check_length(max_length) if max_length is not None else self.max_length(side, task)
        batch = _check_batch_size(batch_size) if batch_size is not None else self.batch_size
        if show_progress_bar is None:
            from llm_embedder.utils.progress import redraws_freely

            # sentence-transformers redraws per batch: in a log file that is a line per batch, so only on a terminal
            show_progress_bar = len(texts) >= PROGRESS_THRESHOLD and redraws_freely()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        left = side == "query" and self.task(task).query_truncation == "left"
        texts = self.fit_texts(clip_chars(texts, length, tail=left), task, side, length)
        if self._fast is not None:
            out = self._fast.encode(
                [prefix + t for t in texts],
                batch_size=batch,
                max_length=length,
                show_progress_bar=show_progress_bar,
                prompt_length=self._fast.prompt_length(prefix) if prefix else None,
            )
            return np.ascontiguousarray(out, dtype=np.float32)
        kwargs: dict[str, Any] = {}
        if length != self.model.max_seq_length:
            kwargs["processing_kwargs"] = {"text": {"max_length": length, "truncation": True}}
        temporary_pool = None
        if devices:
            temporary_pool = kwargs["pool"] = self._start_pool(devices)
        elif self._pool is not None:
            kwargs["pool"] = self._pool
        try:
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
        finally:
            if temporary_pool is not None:
                self.model.stop_multi_process_pool(temporary_pool)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self.dtype != "fp32":
            # normalised in bf16/fp16, the norms are off by up to ~1e-2; renormalise in float32
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_queries(self, texts: Sequence[str] | str, task: str = "qa", **kwargs: Any) -> np.ndarray:
        """Embed queries of ``task`` (the task's query instruction is prepended)."""
        return self.encode(texts, task=task, side="query", **kwargs)

    def encode_keys(self, texts: Sequence[str] | str, task: str = "qa", **kwargs: Any) -> np.ndarray:
        """Embed keys (passages, turns, chunks, examples, tools) of ``task``."""
        return self.encode(texts, task=task, side="key", **kwargs)

    def start_pool(self, devices: Sequence[str]) -> None:
        """Keep worker processes on ``devices`` for repeated large encodes (stop with :meth:`stop_pool`)."""
        self.stop_pool()
        self._pool = self._start_pool(devices)

    def _start_pool(self, devices: Sequence[str]) -> Any:
        """A sentence-transformers process pool, with two fixes around it.

        CPU workers each get ``cores / workers`` threads (torch's default of all cores per worker oversubscribes
        the machine ``workers`` times over), and the model goes back to its device afterwards (starting a pool
        moves it to the CPU in place).
        """
        devices = [str(d) for d in devices]
        if not devices:
            raise UserError("empty device list", hint="e.g. devices=['cuda:0', 'cuda:1'] or ['cpu', 'cpu']")
        device = self.model.device
        env: dict[str, str] = {}
        cpu_workers = sum(d == "cpu" for d in devices)
        if cpu_workers and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, _usable_cores() // cpu_workers))
        os.environ.update(env)
        try:
            pool = self.model.start_multi_process_pool(devices)
        finally:
            for name in env:
                os.environ.pop(name, None)
            self.model.to(device)
        return pool

    def stop_pool(self) -> None:
        if self._pool is not None:
            self.model.stop_multi_process_pool(self._pool)
            self._pool = None

    # ------------------------------------------------------------------ persistence
    def prompts(self) -> dict[str, str]:
        """sentence-transformers prompts for every task: ``{"qa_query": ..., "qa_key": ...}``."""
        out: dict[str, str] = {}
        for spec in self.all_tasks():
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
                "tasks": {spec.name: spec.to_dict() for spec in self.all_tasks()},
            },
        )
        if model_card is not None:
            (path / "README.md").write_text(model_card, encoding="utf-8")
        return str(path)

    def __repr__(self) -> str:
        return f"LLMEmbedder(model={self.source!r}, dim={self.dim}, backend={self.backend!r}, dtype={self.dtype!r})"
