"""``llm-embedder train`` end to end on a tiny model: output folder, ablation switches, kill -9 + resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model, make_records, write_jsonl

from llm_embedder.errors import DataError, UserError
from llm_embedder.tasks.registry import TASKS
from llm_embedder.training.config import TrainConfig
from llm_embedder.training.task_losses import build_task_loss, describe_loss, resolve_training_spec

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = build_tiny_model(root / "tiny")
    files = {
        "qa": write_jsonl(root / "qa.jsonl", make_records(24, seed=1)),
        "chat": write_jsonl(root / "chat.jsonl", make_records(16, seed=2, history=True)),
        "tool": write_jsonl(root / "tool.jsonl", make_records(16, seed=3, scored=False)),
    }
    return root, model, files


def recipe(workspace, out: Path, **overrides) -> dict:
    root, model, files = workspace
    base = {
        "model": model,
        "data": dict(files),
        "output": str(out),
        "steps": 6,
        "batch_size": 4,
        "group_size": 3,
        "lr": 1e-3,
        "query_max_length": 48,
        "key_max_length": 48,
        "grad_cache_chunk": 4,
        "save_steps": 3,
        "logging_steps": 2,
        "num_workers": 0,
        "device": "cpu",
    }
    base.update(overrides)
    return base


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# ---------------------------------------------------------------------------------------------- output
def test_train_writes_a_loadable_model_with_instructions_and_card(workspace, tmp_path):
    from sentence_transformers import SentenceTransformer

    from llm_embedder import LLMEmbedder
    from llm_embedder.training import train

    out = tmp_path / "model"
    assert train(recipe(workspace, out, num_workers=1, log_batches=True)) == str(out)

    assert not (out / "checkpoints").exists()  # removed after success
    assert train(recipe(workspace, out, resume=True)) == str(out)  # a finished run has nothing to resume
    with pytest.raises(UserError, match="already holds a trained model"):
        train(recipe(workspace, out))
    before, after = weights(Path(workspace[1])), weights(out)
    assert any(not torch.equal(before[name], after[name]) for name in before)

    embedder = LLMEmbedder(out, device="cpu")
    # trained with 48-token budgets, it encodes with what the base can read (inference_max_length: model)
    base = LLMEmbedder(workspace[1], device="cpu")
    assert base.query_max_length != 48
    assert embedder.use_instructions and embedder.query_max_length == base.query_max_length
    assert embedder.key_max_length == base.key_max_length
    vectors = embedder.encode_queries(["alpha beta"], task="qa")
    assert vectors.shape == (1, 32)
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts["qa_query"] == TASKS.get("qa").query_instruction
    assert st.prompts["chat_key"] == TASKS.get("chat").key_instruction

    card = (out / "README.md").read_text()
    for text in (
        "base_model:",
        "stabilized distillation",
        "KL distillation",
        "InfoNCE",
        "final training loss",
        "| tool |",
    ):
        assert text in card
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["metrics"]["steps"] == 6 and summary["metrics"]["training_loss"] > 0
    assert TrainConfig.from_dict(json.loads((out / "training_config.json").read_text())).training.steps == 6

    log = [json.loads(line) for line in (out / "batches-rank0.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 7))
    for entry in log:
        assert {i.split(":")[0] for i in entry["ids"]} == {entry["dataset"]}


def test_ablation_switches(workspace, tmp_path):
    from llm_embedder import LLMEmbedder
    from llm_embedder.training import train

    out = tmp_path / "ablation"
    train(
        recipe(
            workspace,
            out,
            use_instructions=False,
            mixed_batches=True,
            dtype="bf16",
            grad_cache_chunk=None,
            steps=3,
            log_batches=True,
        )
    )
    embedder = LLMEmbedder(out, device="cpu")
    assert not embedder.use_instructions and embedder.instruction("qa", "query") == ""
    log = [json.loads(line) for line in (out / "batches-rank0.jsonl").read_text().splitlines()]
    assert any(entry["dataset"] == "mixed" for entry in log)
    card = (out / "README.md").read_text()
    assert "OFF (w/o instruction ablation)" in card and "MIXED" in card


def test_loss_resolution_from_the_task_table():
    qa, chat, tool = (TASKS.get(name).training for name in ("qa", "chat", "tool"))
    assert describe_loss(build_task_loss(resolve_training_spec(qa, task="qa"))) == (
        "stabilized distillation (alpha=1, positive rank: reference, tau=0.01)"
    )
    kl = resolve_training_spec(qa, task="qa", distillation="kl")
    assert describe_loss(build_task_loss(kl)).startswith("KL distillation") and kl.loss == "kl_distillation"
    mixed = dataclasses.replace(qa, contrastive_weight=0.2, positive_rank="reward")  # the earlier default, by value
    assert describe_loss(build_task_loss(mixed)) == (
        "0.2 * InfoNCE over all in-batch keys (tau=0.01) + 1 * stabilized distillation (alpha=1, positive rank: "
        "reward, tau=0.01)"
    )
    hard = resolve_training_spec(chat, task="chat", hard_labels=True)
    assert hard.loss == "contrastive" and hard.positive == "first" and not hard.needs_teacher_scores
    switched = resolve_training_spec(tool, task="tool", loss_overrides={"tool": "stabilized"})
    assert switched.loss == "stabilized_distillation" and switched.distill_weight == 1.0
    with pytest.raises(UserError, match="unknown loss"):
        resolve_training_spec(tool, task="tool", loss_overrides={"tool": "magic"})

    from llm_embedder.training.losses import ContrastiveLoss

    class MyLoss(ContrastiveLoss):  # the escape hatch: a class (or a callable) instead of a name
        pass

    assert isinstance(build_task_loss(tool, override=MyLoss), MyLoss)
    assert isinstance(build_task_loss(tool, override=lambda spec, tau: MyLoss(temperature=tau)), MyLoss)
    config = TrainConfig.from_dict({"output": "x", "data": {"tool": "t.jsonl"}, "loss_overrides": {"tool": MyLoss}})
    assert config.to_json()["loss_overrides"]["tool"].endswith("MyLoss")


def test_recipe_file_and_cli_overrides(workspace, tmp_path):
    root, model, files = workspace
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {model}\ndata:\n  qa: {files['qa']}\n  extra: {{path: qa.jsonl, task: qa, weight: 2}}\n"
        "steps: 7\nbatch-size: 2\noutput: out\n"
    )
    config = TrainConfig.from_file(path, {"steps": 9, "mixed_batches": True})
    assert config.training.steps == 9 and config.training.batch_size == 2 and config.data.mixed_batches
    assert config.data.data[1].path == str(tmp_path / "qa.jsonl") and config.dataset_weights()["extra"] == 2.0
    assert TrainConfig.from_dict(config.to_dict()) == config
    path.write_text("stepz: 3\n")
    with pytest.raises(UserError, match="unknown key.*stepz"):
        TrainConfig.from_file(path)


# ---------------------------------------------------------------------------------------------- bad input
def cli(args: list[str], capsys) -> tuple[int, str]:
    from llm_embedder.cli.main import main

    code = main(["train", *args])
    return code, capsys.readouterr().err


def test_unscored_records_for_a_distilled_task(workspace, tmp_path, capsys):
    root, model, _ = workspace
    unscored = write_jsonl(tmp_path / "qa_unscored.jsonl", make_records(8, seed=4, scored=False))
    code, err = cli(
        ["--model", model, "--data", f"qa={unscored}", "-o", str(tmp_path / "o"), "--device", "cpu"], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{unscored}:1: field 'teacher_scores'" in err and "and 7 more" in err and "--hard-labels" in err
    # with hard labels the same file is fine to load
    from llm_embedder.training.dataset import load_training_sets

    config = TrainConfig.from_dict({"data": {"qa": unscored}, "output": "x", "hard_labels": True})
    assert len(load_training_sets(config, TASKS)[0]) == 8


def test_bad_input_is_one_line_before_training(workspace, tmp_path, capsys):
    root, model, files = workspace
    from llm_embedder.training.dataset import load_training_sets

    def load(**overrides):
        return load_training_sets(TrainConfig.from_dict({"output": "x", **overrides}), TASKS)

    few = write_jsonl(tmp_path / "few.jsonl", make_records(4, seed=5, candidates=3))
    with pytest.raises(
        DataError, match=r"few.jsonl:1: field 'neg': has 2 negative\(s\), fewer than group size - 1 = 7"
    ):
        load(data={"qa": few}, group_size=8, repeat=False)
    assert len(load(data={"qa": few}, group_size=8)[0]) == 4  # repeating (the reference's behaviour)

    code, err = cli(
        [
            "--model",
            model,
            "--data",
            f"qa={files['qa']}",
            "--batch-size",
            "32",
            "-o",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and "dataset 'qa' has 24 usable record(s)" in err and "--batch-size" in err

    untasked = write_jsonl(tmp_path / "mine.jsonl", make_records(4, seed=6))
    with pytest.raises(UserError, match="cannot tell the task of dataset 'mine'"):
        load(data={"mine": untasked})
    assert load(data=[f"mine:qa={untasked}"])[0].task == "qa"

    code, err = cli(["--data", f"qa={files['qa']}", "-o", str(tmp_path / "o"), "--steps", "0"], capsys)
    assert code == 2 and "steps must be a positive integer" in err


# ---------------------------------------------------------------------------------------------- kill -9 + resume
_KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time
    from transformers import TrainerCallback
    from llm_embedder.training import train

    class PauseAfterStep5(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                time.sleep(120)  # checkpoint 4 is complete, step 5 is not saved: the test kills us here

    train(json.loads(open(sys.argv[1]).read()), callbacks=[PauseAfterStep5()])
    """
)


def test_kill_and_resume_matches_an_uninterrupted_run(workspace, tmp_path):
    from llm_embedder.training import train

    steps = dict(steps=8, save_steps=2, keep_checkpoints=True, log_batches=True)
    reference = tmp_path / "reference"
    train(recipe(workspace, reference, **steps))

    out = tmp_path / "killed"
    config_file = tmp_path / "killed.json"
    config_file.write_text(json.dumps(recipe(workspace, out, num_workers=1, **steps)))
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, str(script), str(config_file)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    checkpoint = out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    batch_log = out / "batches-rank0.jsonl"
    while not (checkpoint.exists() and batch_log.exists() and len(batch_log.read_text().splitlines()) >= 5):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run did not reach step 5"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "model.safetensors").exists()  # it really died before the end

    (out / "batches-rank0.jsonl").rename(out / "killed-run.jsonl")
    with pytest.raises(UserError, match="--resume"):
        train(recipe(workspace, out, **steps))
    with pytest.raises(UserError, match="batch_size"):
        train(recipe(workspace, out, resume=True, batch_size=2, **{**steps, "steps": 8}))
    train(recipe(workspace, out, resume=True, **steps))

    # it really resumed from checkpoint 4, and the data continued exactly where it stopped
    def log(folder: Path) -> list[dict]:
        return [json.loads(line) for line in (folder / "batches-rank0.jsonl").read_text().splitlines()]

    reference_log = {entry["step"]: entry["ids"] for entry in log(reference)}
    before = [json.loads(line) for line in (out / "killed-run.jsonl").read_text().splitlines()]
    after = log(out)
    assert [e["step"] for e in before] == [1, 2, 3, 4, 5]
    assert [e["step"] for e in after] == [5, 6, 7, 8]  # step 5 was never saved: it is redone
    assert all(entry["ids"] == reference_log[entry["step"]] for entry in before + after)

    expected, resumed = weights(reference), weights(out)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_the_training_truncation_can_stay_the_inference_length(workspace, tmp_path):
    """``inference_max_length: training`` keeps the reference's coupling: the saved model encodes with the training
    budgets; anything else is refused in one line."""
    from llm_embedder import LLMEmbedder
    from llm_embedder.training import train

    out = tmp_path / "coupled"
    train(recipe(workspace, out, steps=1, save_steps=1, inference_max_length="training", key_max_length=40))
    embedder = LLMEmbedder(out, device="cpu")
    assert (embedder.query_max_length, embedder.key_max_length) == (48, 40)
    with pytest.raises(UserError, match="inference_max_length must be 'model' or 'training'"):
        train(recipe(workspace, tmp_path / "bad", inference_max_length="long"))


def test_in_batch_duplicates_mask_reaches_the_loss(workspace, tmp_path, monkeypatch):
    """``in_batch_duplicates: mask`` end to end: the training items carry ALL their labelled positives, the
    collator their text ids, and the loss leaves out another group's copy of one - here record 0's second
    positive, never sampled into its own group (tool takes the first), is record 1's positive; the model card
    says so. Any other value is refused in one line."""
    from train_helpers import one_step_recipe

    from llm_embedder.training import train
    from llm_embedder.training.losses import base

    _, model, _ = workspace
    positives = [["tool 0: does thing 0", "the shared tool: does every thing"], ["the shared tool: does every thing"]]
    positives += [[f"tool {i}: does thing {i}"] for i in (2, 3)]
    rows = [
        {
            "query": f"which tool does thing {i}?",
            "pos": pos,
            "task": "tool",
            "query_id": i,
            "neg": [f"tool {i}.{j}: does something else" for j in range(3)],
        }
        for i, pos in enumerate(positives)
    ]
    data = write_jsonl(tmp_path / "tool.jsonl", rows)
    masks = []
    original = base.duplicate_keys

    def spy(*args):
        masks.append(original(*args))
        return masks[-1]

    monkeypatch.setattr(base, "duplicate_keys", spy)
    out = tmp_path / "dedup"
    train(one_step_recipe(model, {"tool": data}, out, in_batch_duplicates="mask", log_batches=True))
    assert masks, "the loss never saw the text ids"
    order = json.loads((out / "batches-rank0.jsonl").read_text().splitlines()[0])["ids"]
    # groups of 3, positive first: only record 0's query loses a negative, record 1's positive
    assert masks[0].nonzero().tolist() == [[order.index("tool:0"), 3 * order.index("tool:1")]]
    assert "without duplicates of the query's own keys" in (out / "README.md").read_text()
    with pytest.raises(UserError, match="unknown in_batch_duplicates 'drop'.*keep, mask"):
        train(one_step_recipe(model, {"tool": data}, tmp_path / "bad", in_batch_duplicates="drop"))


def test_a_recipes_task_file_changes_that_run_only(workspace, tmp_path):
    """``tasks_file`` redefines tasks for its run, on a copy: the process's task table stays as it was."""
    from train_helpers import one_step_recipe

    from llm_embedder.training import train

    _, model, files = workspace
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(
        "qa:\n  training:\n    loss: contrastive\n    contrastive_weight: 1.0\n    distill_weight: 0.0\n"
    )
    before = TASKS.get("qa").to_dict()
    out = tmp_path / "out"
    train(one_step_recipe(model, {"qa": files["qa"]}, out, tasks_file=str(tasks_file)))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["datasets"][0]["loss"].startswith("InfoNCE")
    assert TASKS.get("qa").to_dict() == before
    assert "stabilized distillation" in describe_loss(
        build_task_loss(resolve_training_spec(TASKS.get("qa").training, task="qa"))
    )


def test_a_task_file_can_give_one_task_its_own_temperature(workspace, tmp_path):
    """``training.temperature`` in a task file: that task's loss uses it, every other task keeps the run's tau.
    (recipes/tasks/six-task.yaml trains tool at 0.05 and the other tasks at the reference's 0.01.)"""
    from train_helpers import one_step_recipe

    from llm_embedder.training import train

    tool = dataclasses.replace(TASKS.get("tool").training, temperature=0.05)
    assert describe_loss(build_task_loss(tool, temperature=0.01)) == "InfoNCE over all in-batch keys (tau=0.05)"
    assert describe_loss(build_task_loss(TASKS.get("tool").training, temperature=0.01)).endswith("(tau=0.01)")
    assert TASKS.get("tool").training.temperature is None  # the reference: one tau for every task

    _, model, files = workspace
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text("tool:\n  training:\n    temperature: 0.05\n")
    out = tmp_path / "out"
    train(one_step_recipe(model, {"qa": files["qa"], "tool": files["tool"]}, out, tasks_file=str(tasks_file)))
    losses = {d["name"]: d["loss"] for d in json.loads((out / "training_summary.json").read_text())["datasets"]}
    assert losses["tool"] == "InfoNCE over all in-batch keys (tau=0.05)"
    assert losses["qa"].endswith("tau=0.01)")
    for bad in ("0", "-0.05", ".nan", ".inf", "true", "x"):
        tasks_file.write_text(f"tool:\n  training:\n    temperature: {bad}\n")
        with pytest.raises(UserError, match="temperature"):
            train(one_step_recipe(model, {"tool": files["tool"]}, tmp_path / "bad", tasks_file=str(tasks_file)))


def test_a_task_trained_without_instructions_is_encoded_without_them(workspace, tmp_path):
    """recipes/tasks/qa-plain.yaml: qa trains without the paper's instructions, and the saved model keeps it so -
    its qa queries are encoded as the plain base reads them, the other tasks keep the paper's strings."""
    from train_helpers import one_step_recipe

    from llm_embedder import LLMEmbedder
    from llm_embedder.training import train

    _, model, files = workspace
    plain = Path(__file__).resolve().parents[1] / "recipes" / "tasks" / "qa-plain.yaml"
    out = tmp_path / "out"
    train(one_step_recipe(model, {"qa": files["qa"]}, out, tasks_file=str(plain)))
    trained = LLMEmbedder(str(out), device="cpu")
    assert trained.instruction("qa", "query") == trained.instruction("qa", "key") == ""
    assert trained.instruction("tool", "query") == TASKS.get("tool").query_instruction
    assert TASKS.get("qa").query_instruction == "Represent this query for retrieving relevant documents: "
    assert f"the built-in table changed by `{plain}`" in (out / "README.md").read_text()
