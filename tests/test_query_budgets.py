"""A task's ``query_max_tokens``: at most that many tokens of query TEXT, on top of the instruction, at retrieval
time, in training and in the service's conversational queries alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import build_tiny_model, make_records, one_step_recipe, write_jsonl

from llm_embedder import LLMEmbedder, UserError
from llm_embedder.tasks.registry import builtin_registry
from llm_embedder.tasks.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVERSATION = (
    "Speaker 1: I need some advice on where to go on vacation, have you been anywhere lately? Speaker 2: I went "
    "to the Rockies and followed the North Saskatchewan River from its glacier east across the prairie. "
    "Speaker 1: where does the north saskatchewan river end?"
)


def _embedder(use_instructions: bool, **fields: object) -> LLMEmbedder:
    tasks = builtin_registry()
    tasks.update_from_mapping(fields, source="test")
    return LLMEmbedder(device="cpu", use_instructions=use_instructions, tasks=tasks)


@pytest.mark.parametrize("use_instructions", [True, False])
def test_a_convsearch_query_keeps_its_last_tokens_of_text_with_or_without_the_instruction(use_instructions):
    embedder = _embedder(use_instructions, convsearch={"query_max_tokens": 10})
    tokenizer = embedder.model.tokenizer
    instruction = embedder.instruction("convsearch", "query")
    assert bool(instruction) is use_instructions
    overhead = 2 + len(tokenizer(instruction, add_special_tokens=False)["input_ids"])
    assert embedder.max_length("query", "convsearch") == 10 + overhead
    assert embedder.max_length("query") == embedder.query_max_length == 256, "other tasks keep the model's budget"
    assert embedder.text_budget("convsearch", "query") == 10, "the text's share: the field itself"
    assert embedder.text_budget("convsearch", "query", 7) == max(0, 7 - overhead)
    [fitted] = embedder.fit_texts([CONVERSATION], "convsearch", "query")
    text_ids = tokenizer(CONVERSATION, add_special_tokens=False)["input_ids"]
    assert tokenizer(fitted, add_special_tokens=False)["input_ids"] == text_ids[-10:]
    vec = embedder.encode_queries([CONVERSATION], task="convsearch")
    raw = embedder.model.encode([instruction + fitted], normalize_embeddings=True)
    np.testing.assert_allclose(vec, raw, atol=1e-6)
    # an explicit max_length still wins; keys are not touched
    assert embedder.fit_texts([CONVERSATION], "convsearch", "query", 256) == [CONVERSATION]
    assert embedder.max_length("key", "convsearch") == embedder.key_max_length


def test_a_right_truncated_task_keeps_its_first_tokens_and_the_model_budget_caps_the_field():
    embedder = _embedder(False, qa={"query_max_tokens": 6}, chat={"query_max_tokens": 100_000})
    tokenizer = embedder.model.tokenizer
    ids = tokenizer(CONVERSATION, add_special_tokens=False)["input_ids"]
    head = tokenizer.decode(ids[:6])
    np.testing.assert_allclose(
        embedder.encode_queries([CONVERSATION], task="qa"), embedder.encode_queries([head], task="qa"), atol=1e-6
    )
    assert embedder.max_length("query", "chat") == embedder.query_max_length


def test_the_builtin_table_cuts_convsearch_to_48_tokens_and_null_restores_the_reference():
    """The default chosen by the measurement in docs/results.md; every other task keeps the model's budget."""
    budgets = {spec.name: spec.query_max_tokens for spec in builtin_registry().specs()}
    assert budgets == {"qa": None, "convsearch": 48, "chat": None, "lrlm": None, "icl": None, "tool": None}
    reference = _embedder(False, convsearch={"query_max_tokens": None})
    assert reference.max_length("query", "convsearch") == reference.query_max_length
    assert reference.fit_texts([CONVERSATION], "convsearch", "query") == [CONVERSATION]
    assert _embedder(False).max_length("query", "convsearch") == 48 + 2


def test_the_field_survives_saving(tmp_path):
    embedder = _embedder(False, convsearch={"query_max_tokens": 12})
    embedder.save(tmp_path / "model")
    loaded = LLMEmbedder(tmp_path / "model", device="cpu")
    assert loaded.task("convsearch").query_max_tokens == 12
    np.testing.assert_allclose(
        loaded.encode_queries([CONVERSATION], task="convsearch"),
        embedder.encode_queries([CONVERSATION], task="convsearch"),
        atol=1e-6,
    )


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "64"])
def test_a_bad_query_budget_is_one_line_naming_the_field(value):
    with pytest.raises(UserError, match=r"task 'mine' field 'query_max_tokens' is .*") as err:
        TaskSpec.from_dict("mine", {"query_instruction": "q: ", "key_instruction": "k: ", "query_max_tokens": value})
    assert "\n" not in str(err.value)


def test_training_cuts_the_queries_where_retrieval_does(tmp_path, monkeypatch):
    """The trainer hands the collator each task's query budget as the embedder computes it; the saved model
    carries the field, so it encodes with the budget it was trained with."""
    from llm_embedder.training import train
    from llm_embedder.training import trainer as trainer_module

    seen: dict[str, object] = {}
    real = trainer_module.GroupCollator

    def recording(*args: object, **kwargs: object):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "GroupCollator", recording)
    model = build_tiny_model(tmp_path / "tiny")
    data = {"qa": write_jsonl(tmp_path / "qa.jsonl", make_records(8, seed=1))}
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text("qa:\n  query_max_tokens: 5\n", encoding="utf-8")
    out = tmp_path / "out"
    train(one_step_recipe(model, data, out, tasks_file=str(tasks_file)))
    saved = LLMEmbedder(out, device="cpu")
    assert saved.task("qa").query_max_tokens == 5
    assert seen["task_query_max_length"] == {"qa": saved.max_length("query", "qa")}
    assert saved.max_length("query", "qa") < 32
    assert json.loads((out / "llm_embedder.json").read_text())["tasks"]["qa"]["query_max_tokens"] == 5


def test_the_collator_cuts_each_tasks_queries_to_its_own_budget():
    from sentence_transformers import SentenceTransformer

    from llm_embedder.model.loading import default_encoder_path
    from llm_embedder.training.collator import GroupCollator

    model = SentenceTransformer(str(default_encoder_path()), device="cpu")
    collator = GroupCollator(
        model.preprocess,
        instruction=lambda task, side: "",
        task_names=["qa", "convsearch"],
        query_max_length=40,
        key_max_length=16,
        task_query_max_length={"convsearch": 12},
    )
    items = [
        {"dataset": t, "task": t, "query": CONVERSATION, "keys": ["a key"], "teacher_scores": None, "id": t}
        for t in ("qa", "convsearch")
    ]
    for item in items:
        lengths = collator([item])["query_attention_mask"].sum(dim=1)
        assert int(lengths[0]) == (12 if item["task"] == "convsearch" else 40)


def test_the_tasks_command_says_how_a_query_is_cut(capsys):
    from llm_embedder.cli.main import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "query cut to 48 tokens of text, its end kept" in out
    assert out.count("query cut to") == 1, "only convsearch cuts its queries"
