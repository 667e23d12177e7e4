"""The task table: which instruction, reward template, loss and metric each retrieval task uses."""

from llm_embedder.tasks.registry import TASKS, TaskRegistry, builtin_registry, get_task, load_task_file, register_task
from llm_embedder.tasks.spec import EvaluationSpec, RewardSpec, TaskSpec, TrainingSpec

__all__ = [
    "TASKS",
    "EvaluationSpec",
    "RewardSpec",
    "TaskRegistry",
    "TaskSpec",
    "TrainingSpec",
    "builtin_registry",
    "get_task",
    "load_task_file",
    "register_task",
]
