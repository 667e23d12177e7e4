"""Per-task key budgets in training (``task_key_max_length``): the collator cuts each task's keys to its own budget,
the recipe checks the values, the trainer checks the tasks and the encoder's limit, the card and the saved model
say what was used."""

from __future__ import annotations

import json

import pytest
from train_helpers import WORDS, build_tiny_model, make_records, one_step_recipe, write_jsonl

from llm_embedder.errors import UserError
from llm_embedder.training.collator import GroupCollator
from llm_embedder.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LONG = " ".join(WORDS * 3)  # far over every budget below


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"), device="cpu")


def _items(task: str, n: int = 2) -> list[dict]:
    return [
        {
            "dataset": task,
            "task": task,
            "query": LONG,
            "keys": [LONG, "short key"],
            "teacher_scores": None,
            "id": str(i),
        }
        for i in range(n)
    ]


def _key_lengths(collator: GroupCollator, items: list[dict]) -> list[int]:
    """Token count of each key, in the items' order."""
    batch = collator(items)
    lengths = batch["key_attention_mask"].sum(dim=1)[batch["label"]["key_order"]]
    return [int(v) for v in lengths]


def test_each_task_keys_are_cut_to_their_own_budget(tiny_model):
    def collator(**budgets: int) -> GroupCollator:
        return GroupCollator(
            tiny_model.preprocess,
            instruction=lambda task, side: "",
            task_names=["qa", "tool"],
            query_max_length=20,
            key_max_length=16,
            task_key_max_length=budgets,
        )

    per_task = collator(tool=48)
    assert _key_lengths(per_task, _items("tool"))[::2] == [48, 48]
    assert _key_lengths(per_task, _items("qa"))[::2] == [16, 16]
    # a mixed batch is tokenised to the longest budget, each key still cut to its own task's
    assert _key_lengths(per_task, _items("tool", 1) + _items("qa", 1))[::2] == [48, 16]
    # queries keep the one query budget
    assert int(per_task(_items("tool"))["query_attention_mask"].sum(dim=1).max()) == 20
    # without the override tool is cut like every task
    assert _key_lengths(collator(), _items("tool"))[::2] == [16, 16]


def test_recipe_values_are_checked_with_one_line():
    from llm_embedder.cli.main import build_parser
    from llm_embedder.cli.train import overrides_from_args

    base = {"data": ["tool=x.jsonl"], "output": "o"}
    with pytest.raises(UserError, match=r"^task_key_max_length.tool must be a positive integer, got 0$"):
        TrainConfig.from_dict({**base, "task_key_max_length": {"tool": 0}}).validate()
    with pytest.raises(UserError, match=r"^task_key_max_length.tool must be a positive integer, got 25.5$"):
        TrainConfig.from_dict({**base, "task_key_max_length": {"tool": 25.5}}).validate()
    with pytest.raises(UserError, match=r"^task_key_max_length must be a mapping, got 256"):
        TrainConfig.from_dict({**base, "task_key_max_length": 256}).validate()
    args = build_parser().parse_args(["train", "--data", "tool=x.jsonl", "--task-key-max-length", "tool=256"])
    overrides = overrides_from_args(args)
    assert overrides["task_key_max_length"] == {"tool": 256}
    assert TrainConfig.from_dict({**overrides, "output": "o"}).model.task_key_max_length == {"tool": 256}
    with pytest.raises(UserError, match=r"^bad --task-key-max-length 'tool=long': 'long' is not a number"):
        overrides_from_args(build_parser().parse_args(["train", "--task-key-max-length", "tool=long"]))


def test_trainer_checks_the_tasks_and_the_limit_and_records_the_budgets(tmp_path):
    from llm_embedder.training import train

    model = build_tiny_model(tmp_path / "tiny")
    data = {"qa": write_jsonl(tmp_path / "qa.jsonl", make_records(8, seed=1))}
    with pytest.raises(UserError, match=r"^task_key_max_length names task\(s\) tool that no training dataset has"):
        train(one_step_recipe(model, data, tmp_path / "bad", task_key_max_length={"tool": 64}))
    with pytest.raises(UserError, match=r"^task_key_max_length.qa: max length 4096 is out of range for this model"):
        train(one_step_recipe(model, data, tmp_path / "bad", task_key_max_length={"qa": 4096}))
    out = tmp_path / "qa-48"
    train(one_step_recipe(model, data, out, task_key_max_length={"qa": 48}, inference_max_length="training"))
    assert "key 32, qa 48 tokens in training" in (out / "README.md").read_text()
    # "training" inference lengths: the longest key budget any task trained with
    assert json.loads((out / "llm_embedder.json").read_text())["key_max_length"] == 48
