"""The embedding model: loading, encoding per task, saving, fast inference paths."""

from typing import TYPE_CHECKING, Any

from llm_embedder.model.loading import default_encoder_path, resolve_model_path

if TYPE_CHECKING:
    from llm_embedder.model.embedder import LLMEmbedder

__all__ = ["LLMEmbedder", "default_encoder_path", "resolve_model_path"]


def __getattr__(name: str) -> Any:
    # the embedder imports torch; ``model.loading`` (used by lm/ and the CLI) must not pay for it
    if name == "LLMEmbedder":
        from llm_embedder.model.embedder import LLMEmbedder

        return LLMEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
