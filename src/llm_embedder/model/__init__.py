"""The embedding model: loading, encoding per task, saving, fast inference paths."""

from llm_embedder.model.embedder import LLMEmbedder
from llm_embedder.model.loading import default_encoder_path, resolve_model_path

__all__ = ["LLMEmbedder", "default_encoder_path", "resolve_model_path"]
