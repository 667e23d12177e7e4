"""The task table: the paper's six tasks as data, user tasks from Python or a file, one-line errors."""

from __future__ import annotations

import json

import pytest

from llm_embedder import TaskSpec, UserError
from llm_embedder.tasks import registry as registry_module
from llm_embedder.tasks.registry import TaskRegistry, builtin_registry

# method.md section 1, copied exactly: a model trained with these strings only works with them
PAPER_INSTRUCTIONS = {
    "qa": ("Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: "),
    "convsearch": (
        "Encode this query and context for searching relevant passages: ",
        "Encode this passage for retrieval: ",
    ),
    "chat": (
        "Embed this dialogue to find useful historical dialogues: ",
        "Embed this historical dialogue for retrieval: ",
    ),
    "lrlm": (
        "Embed this text chunk for finding useful historical chunks: ",
        "Embed this historical text chunk for retrieval: ",
    ),
    "icl": (
        "Convert this example into vector to look for useful examples: ",
        "Convert this example into vector for retrieval: ",
    ),
    "tool": (
        "Transform this user request for fetching helpful tool descriptions: ",
        "Transform this tool description for retrieval: ",
    ),
}


@pytest.fixture
def global_tasks(monkeypatch):
    """A private copy of the process-wide table, so registering in a test leaks nowhere."""
    tasks = registry_module.TASKS.copy()
    monkeypatch.setattr(registry_module, "TASKS", tasks)
    return tasks


def test_builtin_tasks_are_the_papers():
    tasks = builtin_registry()
    assert tasks.names() == list(PAPER_INSTRUCTIONS)
    for name, (query, key) in PAPER_INSTRUCTIONS.items():
        spec = tasks.get(name)
        assert (spec.query_instruction, spec.key_instruction) == (query, key)
        assert spec.query_prompt_name == f"{name}_query" and spec.key_prompt_name == f"{name}_key"


def test_builtin_reward_loss_and_sampling_follow_the_method():
    tasks = builtin_registry()
    assert tasks.get("qa").key_template == "{title} {text}"
    assert tasks.get("qa").reward.template == "Knowledge: {key}\n\nQuestion: {query}\n\nAnswer: {answer}"
    assert tasks.get("icl").reward.template == "{key}\n{query}\n{answer}"
    assert tasks.get("chat").reward.template == "{key}\nSpeaker 1: {query}\nSpeaker 2: {answer}"
    assert tasks.get("chat").candidates == "history"
    losses = {name: tasks.get(name).training.loss for name in tasks}
    assert losses == {
        "qa": "stabilized_distillation",
        "convsearch": "contrastive",
        "chat": "kl_distillation",
        "lrlm": "kl_distillation",
        "icl": "stabilized_distillation",
        "tool": "contrastive",
    }
    assert tasks.get("chat").training.teacher_temperature == tasks.get("lrlm").training.teacher_temperature == 0.1
    # the reference's per-task configuration (its 0.2 is only a command-line fallback): docs/results.md
    assert tasks.get("qa").training.contrastive_weight == tasks.get("icl").training.contrastive_weight == 0.0
    assert tasks.get("qa").training.positive_rank == tasks.get("icl").training.positive_rank == "reference"
    assert tasks.get("lrlm").training.max_sample_num == 10000 and tasks.get("qa").training.max_sample_num is None
    assert tasks.get("icl").evaluation.option_score == "mean"
    orders = {name: (tasks.get(name).reward.key_order, tasks.get(name).reward.key_separator) for name in tasks}
    assert orders == {
        "qa": ("relevance", "\n"),
        "convsearch": ("relevance", "\n"),
        "chat": ("chronological", "\n"),
        "lrlm": ("chronological", "\n"),
        "icl": ("nearest_last", "\n"),
        "tool": ("relevance", "\n"),
    }
    assert tasks.get("lrlm").training.min_score_margin == 0.1
    assert tasks.get("tool").reward.kind == "none" and not tasks.get("tool").training.needs_teacher_scores
    assert tasks.get("qa").training.needs_teacher_scores and tasks.get("chat").training.positive == "teacher"


def test_spec_round_trips_through_a_dict():
    for spec in builtin_registry().specs():
        assert TaskSpec.from_dict(spec.name, spec.to_dict()) == spec


def test_register_task_and_lookup(global_tasks):
    spec = registry_module.register_task("code", "Find code for: ", "Code: ", description="code search")
    assert registry_module.get_task("code") is spec and "code" in global_tasks
    assert spec.key_template == "{text}" and spec.training.loss == "contrastive"
    # registering the same spec again is harmless, a different one needs overwrite=True
    registry_module.register_task("code", "Find code for: ", "Code: ", description="code search")
    with pytest.raises(UserError, match="already registered"):
        registry_module.register_task("code", "Other: ", "Code: ")
    registry_module.register_task("code", "Other: ", "Code: ", overwrite=True)
    assert registry_module.get_task("code").query_instruction == "Other: "
    assert "code" not in builtin_registry()


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown task 'nope'") as info:
        builtin_registry().get("nope")
    assert "qa, convsearch, chat, lrlm, icl, tool" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"query_instruction": "q: "}, "needs a string 'key_instruction'"),
        ({"query_instruction": "q: ", "key_instruction": "k: ", "colour": 1}, r"unknown field\(s\) colour"),
        ({"query_instruction": "q: ", "key_instruction": "k: ", "training": {"loss": "hinge"}}, "training.loss"),
        (
            {"query_instruction": "q: ", "key_instruction": "k: ", "training": {"positive_rank": "gold"}},
            "'training.positive_rank' is 'gold'",
        ),
        (
            {"query_instruction": "q: ", "key_instruction": "k: ", "training": {"max_sample_num": 0}},
            "'training.max_sample_num' is 0",
        ),
        (
            {"query_instruction": "q: ", "key_instruction": "k: ", "evaluation": {"option_score": "max"}},
            "choose one of mean, sum",
        ),
        ({"query_instruction": "q: ", "key_instruction": "k: ", "reward": {"kind": "template"}}, "no reward.template"),
        ({"query_instruction": "q: ", "key_instruction": "k: ", "candidates": "all"}, "choose one of pos_neg"),
        ("not a mapping", "must be a mapping"),
    ],
)
def test_invalid_task_definitions_are_one_line(fields, message):
    with pytest.raises(UserError, match=message) as info:
        TaskSpec.from_dict("mine", fields, source="tasks.yaml")  # type: ignore[arg-type]
    assert str(info.value).startswith("tasks.yaml") and "\n" not in str(info.value)


def test_invalid_task_name():
    with pytest.raises(UserError, match="invalid task name"):
        TaskSpec.from_dict("bad name!", {"query_instruction": "q", "key_instruction": "k"})


def test_task_file_adds_and_overrides(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "code:\n"
        "  query_instruction: 'Find code for: '\n"
        "  key_instruction: 'Code: '\n"
        "  training: {loss: contrastive}\n"
        "qa:\n"
        "  key_template: '{text}'\n",
        encoding="utf-8",
    )
    tasks = builtin_registry()
    assert tasks.load_file(path) == ["code", "qa"]
    assert tasks.get("code").key_instruction == "Code: "
    # a partial entry for a known task changes only what it names
    assert tasks.get("qa").key_template == "{text}"
    assert tasks.get("qa").query_instruction == PAPER_INSTRUCTIONS["qa"][0]
    assert tasks.get("qa").training.loss == "stabilized_distillation"


def test_task_file_json_and_errors(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"code": {"query_instruction": "q: ", "key_instruction": "k: "}}), encoding="utf-8")
    tasks = TaskRegistry()
    assert tasks.load_file(path) == ["code"] and len(tasks) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("code: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match="cannot parse task file") as info:
        tasks.load_file(broken)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="not found"):
        tasks.load_file(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- qa\n", encoding="utf-8")
    with pytest.raises(UserError, match="must map task names"):
        tasks.load_file(listing)


def test_registry_copy_is_independent():
    tasks = builtin_registry()
    clone = tasks.copy()
    clone.register(TaskSpec(name="mine", query_instruction="q", key_instruction="k"))
    clone.get("qa").description = "changed"
    assert "mine" not in tasks and tasks.get("qa").description != "changed"
    assert tasks.to_dict()["qa"]["query_instruction"] == PAPER_INSTRUCTIONS["qa"][0]
