"""The optional LM behind ``augment(..., generate=True)``: greedy decoding of the augmented prompt (``--lm``)."""

from __future__ import annotations

import threading
from typing import Any


class Generator:
    """``generate(prompt) -> answer``: greedy, at most ``max_new_tokens``, one call at a time (one model copy)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name: str, *, max_new_tokens: int = 64) -> Generator:
        from llm_embedder.lm.loading import load_causal_lm

        model, tokenizer = load_causal_lm(name)
        return cls(model, tokenizer, max_new_tokens=max_new_tokens)

    def __call__(self, prompt: str) -> str:
        import torch

        from llm_embedder.lm.precision import precision_context

        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        with self._lock, torch.inference_mode(), precision_context(self.model, self.model.device):
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
