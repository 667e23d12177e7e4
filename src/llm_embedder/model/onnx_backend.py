"""Fast CPU inference: the embedder's transformer run by ONNX Runtime, fp32 or dynamically quantised to int8.

Why not sentence-transformers' own ``backend="onnx"``: it needs ``optimum``, which pins an older transformers.
So the transformer is exported here with ``torch.onnx`` from the very weights the torch path uses, and only the
transformer runs in ONNX Runtime; the modules after it (Pooling, Dense, Normalize of the sentence-transformers
pipeline) run unchanged in torch on its output, so pooling (cls, mean, lasttoken, prompt exclusion ...) is by
construction the same as in the torch path.

The exported graph is cached in ``cache_dir()/onnx/<model>-<fp32|int8>-<key>/model.onnx`` (the model folder may be a
read-only site-packages folder), keyed by the model folder, the size and mtime of its weight files and the export
settings, and written atomically (temporary folder, then rename), so a killed export is simply redone.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_embedder.errors import UserError

#: bump when the exported graph changes, so stale cache entries are not reused
EXPORT_FORMAT = 1
OPSET = 17
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: export sanity check: ORT vs torch on a padded probe batch
_EXPORT_TOLERANCE = 1e-3
#: padded tokens per ORT batch. On CPU smaller batches run faster per text (activations stay in cache): on the
#: bundled MiniLM, int8, 1 thread, qa passages (~120 tokens), 32 texts/batch gave ~51 texts per CPU-second, a
#: 2,048-token cap (~16 texts) ~57, 64 texts ~45, 128 texts ~37. Short texts still fill ``batch_size``.
DEFAULT_MAX_BATCH_TOKENS = 2048


def default_threads() -> int:
    """Intra-op threads for ORT: ``$LLM_EMBEDDER_ORT_THREADS``, else the cores this process may run on.

    ORT's own default counts the machine's physical cores, which oversubscribes a container or a job limited
    to a few cores (affinity/cgroups); the cores we may actually use is the sensible default.
    """
    env = os.environ.get("LLM_EMBEDDER_ORT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UserError(f"LLM_EMBEDDER_ORT_THREADS={env!r} is not an integer") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_spinning() -> bool:
    """Whether ORT's idle intra-op threads spin-wait for work: ``$LLM_EMBEDDER_ORT_SPIN`` (``0`` or ``1``), default 1.

    Spinning saves the wake-up of the pool threads at each operator of a small batch, but burns their cores while
    they wait. A server, whose event loop needs those cores between encoder calls, or a machine shared with other
    jobs, is faster without it: ``llm-embedder serve`` turns it off (benchmarks/README.md, section serve: at 64
    clients the server's CPU per search fell from 3.1 to 1.7-2.0 ms and its throughput rose from 310 to 480-580 req/s).
    """
    env = os.environ.get("LLM_EMBEDDER_ORT_SPIN", "1")
    if env not in ("0", "1"):
        raise UserError(f"LLM_EMBEDDER_ORT_SPIN={env!r} must be 0 or 1")
    return env == "1"


def weights_fingerprint(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of the weight and config files of a model folder (two levels deep)."""
    root = Path(path)
    found: list[tuple[str, int, int]] = []
    for file in sorted(root.glob("*")) + sorted(root.glob("*/*")):
        rel = file.relative_to(root).as_posix()
        if any(part.startswith(".") for part in file.relative_to(root).parts):
            continue
        if file.suffix in _WEIGHT_SUFFIXES or file.name == "config.json":
            stat = file.stat()
            found.append((rel, stat.st_size, stat.st_mtime_ns))
    return found


def cache_key(model_path: str | os.PathLike[str], dtype: str) -> str:
    """Cache folder name for the export of ``model_path`` as ``dtype`` ("fp32" / "int8")."""
    files = weights_fingerprint(model_path)
    if not any(name.endswith(_WEIGHT_SUFFIXES) for name, _, _ in files):
        raise UserError(
            f"cannot export {model_path} to ONNX: no weight file (*.safetensors, *.bin) found in the model folder",
            hint="use backend='torch' or save the model first",
        )
    payload = {
        "path": str(Path(model_path).resolve()),
        "files": files,
        "dtype": dtype,
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_path).resolve().name)[:40] or "model"
    return f"{name}-{dtype}-{digest}"


def onnx_cache_dir() -> Path:
    from llm_embedder.utils.cache import cache_dir

    return cache_dir() / "onnx"


class _TransformerForExport(torch.nn.Module):
    """Positional-argument wrapper: transformers 5 models take keyword arguments only, tracing passes positions."""

    def __init__(self, transformer: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.transformer = transformer
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, inputs, strict=True))
        return self.transformer(features)["token_embeddings"]


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` and rename it to ``target`` on success.

    If another process finished the same export first, its folder is kept and ours dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model.onnx").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _DropQuantizerAdvice(logging.Filter):
    # quantize_dynamic advises a pre-processing pass through the root logger; on these graphs that pass fails
    # (incomplete symbolic shape inference) and is not needed, so the advice is noise for our users.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class OnnxEncoder:
    """Runs a sentence-transformers model with its transformer in ONNX Runtime (see the module docstring).

    Build it with :meth:`from_embedder`; :meth:`encode` returns L2-normalised float32 vectors in input order.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        tokenizer: Any,
        post_modules: torch.nn.Module,
        *,
        input_names: Sequence[str],
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.onnx_path = str(onnx_path)
        self.tokenizer = tokenizer
        self.post_modules = post_modules.eval()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not default_spinning():
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"])
        graph_inputs = {i.name for i in self.session.get_inputs()}
        self.input_names = [name for name in input_names if name in graph_inputs]
        self.threads = options.intra_op_num_threads
        self.max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_embedder(cls, embedder: Any, *, quantize: bool = False, threads: int | None = None) -> OnnxEncoder:
        """Export (once, cached) the transformer of ``embedder.model`` and open it in ONNX Runtime.

        ``quantize=True`` gives int8 weights (dynamic quantisation, per output channel): about 3x less CPU time
        than fp32 torch at a cosine of >= 0.986 to the fp32 vectors (benchmarks/README.md, section encode).
        Activation scales are chosen per batch, so an int8 vector depends slightly on its batch-mates.
        """
        return cls.from_sentence_transformer(embedder.model, embedder.path, quantize=quantize, threads=threads)

    @classmethod
    def from_sentence_transformer(
        cls, model: Any, model_path: str | os.PathLike[str], *, quantize: bool = False, threads: int | None = None
    ) -> OnnxEncoder:
        transformer = model[0]
        if not hasattr(transformer, "auto_model") or getattr(transformer, "tokenizer", None) is None:
            raise UserError(
                f"the ONNX backend needs a transformer-based model; {type(transformer).__name__} is not one",
                hint="use backend='torch'",
            )
        tokenizer = transformer.tokenizer
        probe = tokenizer(["a"], return_tensors="pt")
        input_names = [name for name in _INPUT_NAMES if name in probe]
        if "input_ids" not in input_names or "attention_mask" not in input_names:
            raise UserError("the ONNX backend needs a tokenizer that returns input_ids and attention_mask")
        fp32 = export_onnx(transformer, model_path, input_names)
        path = quantize_onnx(fp32, model_path) if quantize else fp32
        post = torch.nn.Sequential(*[copy.deepcopy(m) for m in list(model)[1:]]).float()
        return cls(path, tokenizer, post, input_names=input_names, threads=threads)

    # ------------------------------------------------------------------ inference
    def prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` without a trailing special token (as sentence-transformers counts them)."""
        ids = self.tokenizer([prompt])["input_ids"][0]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            return len(ids) - 1
        return len(ids)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        max_length: int = 512,
        show_progress_bar: bool = False,
        prompt_length: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` (instructions already prepended): float32 ``(n, dim)``, L2-normalised, input order.

        Texts are tokenised once, sorted by token count and batched, so each batch is padded only to its own
        longest text; a batch holds at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens (default
        :data:`DEFAULT_MAX_BATCH_TOKENS`). ``prompt_length`` is only used by pooling modules configured with
        ``include_prompt=False``.
        """
        from llm_embedder.utils.progress import progress

        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        encoded = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        columns = {name: encoded[name] for name in self.input_names}
        lengths = np.fromiter((len(ids) for ids in columns["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        out: np.ndarray | None = None
        pad_id = self.tokenizer.pad_token_id or 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        with progress(total=len(texts), desc="Encoding (onnx)", unit="text", disable=not show_progress_bar) as bar:
            for index in _token_budget_batches(order, lengths, batch_size, max_batch_tokens or self.max_batch_tokens):
                width = int(lengths[index[0]])
                feed = {}
                for name in self.input_names:
                    fill = pad_id if name == "input_ids" else 0
                    batch = np.full((len(index), width), fill, dtype=np.int64)
                    for row, i in enumerate(index):
                        values = columns[name][i]
                        if left:
                            batch[row, width - len(values) :] = values
                        else:
                            batch[row, : len(values)] = values
                    feed[name] = batch
                (token_embeddings,) = self.session.run(None, feed)
                vectors = self._pool(token_embeddings, feed["attention_mask"], prompt_length)
                if out is None:
                    out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                out[index] = vectors
                bar.update(len(index))
        assert out is not None
        return out

    def _pool(self, token_embeddings: np.ndarray, attention_mask: np.ndarray, prompt_length: int | None) -> np.ndarray:
        features: dict[str, Any] = {
            "token_embeddings": torch.from_numpy(token_embeddings),
            "attention_mask": torch.from_numpy(attention_mask),
        }
        if prompt_length:
            features["prompt_length"] = prompt_length
        with torch.inference_mode():
            vectors = self.post_modules(features)["sentence_embedding"].float()
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.numpy()


def _token_budget_batches(
    order: np.ndarray, lengths: np.ndarray, batch_size: int, max_tokens: int
) -> Iterator[np.ndarray]:
    """Cut length-sorted (longest first) indices into batches of at most ``batch_size`` texts and ``max_tokens``
    padded tokens (at least one text per batch)."""
    start = 0
    while start < len(order):
        width = max(1, int(lengths[order[start]]))
        count = max(1, min(batch_size, max_tokens // width))
        yield order[start : start + count]
        start += count


# ---------------------------------------------------------------------- export and quantisation
def export_onnx(transformer: Any, model_path: str | os.PathLike[str], input_names: Sequence[str]) -> Path:
    """The fp32 ONNX graph of a sentence-transformers ``Transformer`` module: from the cache, or exported now."""
    target = onnx_cache_dir() / cache_key(model_path, "fp32")
    if (target / "model.onnx").is_file():
        return target / "model.onnx"
    module = copy.deepcopy(transformer).float().eval()
    # Eager attention exports as plain MatMul/Softmax, which ORT fuses and quantises well; the SDPA graph
    # is neither faster nor as precise.
    with contextlib.suppress(Exception):
        module.auto_model.set_attn_implementation("eager")
    wrapper = _TransformerForExport(module, input_names).eval()
    probe = transformer.tokenizer(
        ["a probe", "a longer probe sentence, so that the batch is padded"], padding=True, return_tensors="pt"
    )
    args = tuple(probe[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes["token_embeddings"] = {0: "batch", 1: "sequence"}
    with _atomic_dir(target) as tmp, warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is the one that needs no extra package (onnxscript); its deprecation and
        # tracer warnings are expected here and checked below by comparing outputs.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(tmp / "model.onnx"),
            dynamo=False,
            input_names=list(input_names),
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
        _check_export(tmp / "model.onnx", wrapper, transformer.tokenizer, input_names)
    return target / "model.onnx"


def _check_export(path: Path, wrapper: torch.nn.Module, tokenizer: Any, input_names: Sequence[str]) -> None:
    """Tracing records one path through Python branches; verify the graph on other shapes before caching it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for texts in (["one"], ["x", "three words here", "a somewhat longer sentence with more tokens in it"]):
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        expected = wrapper(*(batch[name] for name in input_names)).numpy()
        (got,) = session.run(None, {name: batch[name].numpy().astype(np.int64) for name in input_names})
        mask = batch["attention_mask"].numpy().astype(bool)
        diff = float(np.abs(got - expected)[mask].max())
        if diff > _EXPORT_TOLERANCE:
            raise RuntimeError(f"ONNX export of {path} differs from torch by {diff:.2e}; not caching it")


def quantize_onnx(fp32_path: Path, model_path: str | os.PathLike[str]) -> Path:
    """int8 weights by dynamic quantisation (per channel; activation-by-activation MatMuls stay fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = onnx_cache_dir() / cache_key(model_path, "int8")
    if (target / "model.onnx").is_file():
        return target / "model.onnx"
    advice = _DropQuantizerAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with _atomic_dir(target) as tmp:
            quantize_dynamic(
                str(fp32_path),
                str(tmp / "model.onnx"),
                weight_type=QuantType.QInt8,
                # per-tensor scales cost ~0.1 cosine on MiniLM; per-channel keeps it at ~0.99
                per_channel=True,
                # attention score MatMuls have no constant weight: quantising their activations hurts quality
                extra_options={"MatMulConstBOnly": True},
                use_external_data_format=fp32_path.stat().st_size > 1_500_000_000,
            )
    finally:
        root.removeFilter(advice)
    return target / "model.onnx"
