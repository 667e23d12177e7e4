"""llm-embedder: one embedding model that retrieves everything an LLM needs (arXiv 2310.07554).

Knowledge passages, conversation memory, earlier chunks of a long text, in-context examples and tool descriptions,
all from one bi-encoder called with a task name, plus the machinery to train it from an LLM's own feedback,
evaluate it per augmentation scenario and serve it.
"""

from typing import TYPE_CHECKING, Any

from llm_embedder.data import Corpus, Record, load_records, read_records, write_records
from llm_embedder.errors import DataError, UserError
from llm_embedder.tasks import TASKS, TaskSpec, get_task, load_task_file, register_task

if TYPE_CHECKING:
    from llm_embedder.model import LLMEmbedder

__version__ = "0.1.0"

__all__ = [
    "TASKS",
    "Corpus",
    "DataError",
    "LLMEmbedder",
    "Record",
    "TaskSpec",
    "UserError",
    "get_task",
    "load_records",
    "load_task_file",
    "read_records",
    "register_task",
    "write_records",
]


def __getattr__(name: str) -> Any:
    # LLMEmbedder needs torch (seconds to import): load it on first use, so `llm-embedder --help`, the task table
    # and the data tools start at once
    if name == "LLMEmbedder":
        from llm_embedder.model.embedder import LLMEmbedder

        return LLMEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
