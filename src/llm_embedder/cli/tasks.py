"""``llm-embedder tasks``: list the task table (instructions, reward, loss)."""

from __future__ import annotations

import argparse
import json

from llm_embedder.cli.common import add_tasks_file_argument, load_tasks_file
from llm_embedder.tasks.registry import TASKS

#: printed above the table: which models the instructions apply to (the answer changes what a user gets)
INSTRUCTIONS_NOTE = (
    "Instructions apply only to models trained with them: a folder saved by `llm-embedder train` (its "
    "llm_embedder.json records it) and BAAI/llm-embedder. Any other model, the embedded default (all-MiniLM-L6-v2) "
    "included, encodes the plain text; force either way with --instructions on|off (use_instructions= in Python)."
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tasks", help="list the tasks and their instructions", description=__doc__)
    add_tasks_file_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the full task table as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_tasks_file(args)
    if args.json:
        print(json.dumps(TASKS.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(INSTRUCTIONS_NOTE)
    print()
    for spec in TASKS.specs():
        print(f"{spec.name}: {spec.description}")
        print(f"  query instruction: {spec.query_instruction!r}")
        print(f"  key instruction:   {spec.key_instruction!r}")
        if spec.query_max_tokens is not None or spec.query_truncation == "left":
            budget = f"{spec.query_max_tokens} tokens of text" if spec.query_max_tokens else "the model's budget"
            print(f"  query cut to {budget}, its {'end' if spec.query_truncation == 'left' else 'start'} kept")
        reward = spec.reward.kind if spec.reward.kind != "template" else repr(spec.reward.template)
        print(f"  reward: {reward}   loss: {spec.training.loss}   metric: {spec.evaluation.main_metric}")
    return 0
