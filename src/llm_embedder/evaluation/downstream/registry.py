"""Scenario name -> evaluator class. ``TaskSpec.evaluation.downstream`` picks one, so a new task reuses a
scenario by naming it in its table entry, and a new scenario is one :func:`register_downstream` call."""

from __future__ import annotations

from llm_embedder.errors import UserError
from llm_embedder.evaluation.downstream.base import DownstreamEvaluator
from llm_embedder.evaluation.downstream.chat import ChatEvaluator
from llm_embedder.evaluation.downstream.icl import ICLEvaluator
from llm_embedder.evaluation.downstream.lrlm import LRLMEvaluator
from llm_embedder.evaluation.downstream.qa import QAEvaluator
from llm_embedder.evaluation.downstream.retrieval_only import RetrievalOnlyEvaluator

DOWNSTREAM: dict[str, type[DownstreamEvaluator]] = {
    "qa": QAEvaluator,
    "chat": ChatEvaluator,
    "lrlm": LRLMEvaluator,
    "icl": ICLEvaluator,
    "retrieval": RetrievalOnlyEvaluator,
}


def register_downstream(name: str, evaluator: type[DownstreamEvaluator], *, overwrite: bool = False) -> None:
    """Make ``evaluation.downstream: <name>`` in a task table select ``evaluator``."""
    if name in DOWNSTREAM and DOWNSTREAM[name] is not evaluator and not overwrite:
        raise UserError(f"downstream scenario {name!r} is already registered", hint="pass overwrite=True")
    DOWNSTREAM[name] = evaluator


def get_downstream(name: str, *, task: str | None = None) -> type[DownstreamEvaluator]:
    """The evaluator class of scenario ``name``; an unknown name is a one-line error."""
    try:
        return DOWNSTREAM[name]
    except KeyError:
        where = f"task {task!r}: " if task else ""
        raise UserError(
            f"{where}unknown downstream scenario {name!r} (evaluation.downstream)",
            hint=f"choose one of {', '.join(DOWNSTREAM)}",
        ) from None
