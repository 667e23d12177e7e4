"""Training never turns bad numbers into a model, survives kills around the final save, and resumes exactly.

Each test reproduces a drill of issue 11 (part 2 and part 5) on a tiny model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model, make_records, write_jsonl

from llm_embedder.errors import UserError
from llm_embedder.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    model = build_tiny_model(root / "tiny")
    qa = write_jsonl(root / "qa.jsonl", make_records(8, seed=1))
    return model, qa


def recipe(tiny, out: Path, **overrides) -> dict:
    model, qa = tiny
    base = {
        "model": model,
        "data": {"qa": qa},
        "output": str(out),
        "steps": 4,
        "batch_size": 2,
        "group_size": 3,
        "lr": 1e-3,
        "query_max_length": 32,
        "key_max_length": 32,
        "save_steps": 2,
        "logging_steps": 1,
        "num_workers": 0,
        "device": "cpu",
    }
    base.update(overrides)
    return base


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    from llm_embedder.cli.main import main

    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


NAN_RECORD = '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [NaN, 0.2]}\n'


# ---------------------------------------------------------------------------------------------- reading records
def test_the_drill_nan_teacher_score_is_one_line_and_no_model(tmp_path, capsys):
    """Issue 11 part 2: this command exited 0, printed 'training loss 0.0000' and saved a NaN model."""
    data = tmp_path / "F.jsonl"
    data.write_text(NAN_RECORD, encoding="utf-8")
    out = tmp_path / "M"
    code, _, err = cli(
        ["--data", f"qa={data}", "--batch-size", "1", "--group-size", "2", "--steps", "2", "-o", str(out)], capsys
    )
    assert code == 2
    assert err == (
        f"llm-embedder train: error: {data}:1: field 'teacher_scores': score 1 is NaN, not a finite number "
        "(rescore the record (llm-embedder score) or remove it; --skip-invalid skips such records)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("literal", "spelled"), [("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e999", "Infinity")]
)
def test_infinite_teacher_scores_are_refused(tiny, tmp_path, literal, spelled):
    from llm_embedder.training import train

    data = tmp_path / "inf.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in make_records(3, seed=2))
        + f'{{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [0.5, {literal}]}}\n',
        encoding="utf-8",
    )
    with pytest.raises(UserError) as info:
        train(recipe(tiny, tmp_path / "o", data={"qa": str(data)}))
    assert str(info.value) == (
        f"{data}:4: field 'teacher_scores': score 2 is {spelled}, not a finite number (rescore the record "
        "(llm-embedder score) or remove it; --skip-invalid skips such records)"
    )


def test_skip_invalid_trains_on_the_rest_and_counts(tiny, tmp_path, capsys):
    model, _ = tiny
    rows = make_records(6, seed=3)
    data = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, NAN_RECORD.strip())
    lines.insert(4, '{"query": "no candidates", "pos": [], "neg": []}')
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "o"
    args = ["--model", model, "--data", f"qa={data}", "--batch-size", "2", "--group-size", "2", "--steps", "2"]
    args += ["--query-max-length", "32", "--key-max-length", "32", "--num-workers", "0", "--device", "cpu"]
    args += ["-o", str(out)]

    code, _, err = cli(args, capsys)
    assert code == 2 and err.startswith(f"llm-embedder train: error: {data}:3: field 'teacher_scores'")

    code, stdout, _ = cli([*args, "--skip-invalid"], capsys)
    assert code == 0
    assert (
        f"[train]   qa: skipped 2 invalid record(s) of {data} (first: {data}:3: field 'teacher_scores': score 1 is "
        "NaN, not a finite number (rescore the record (llm-embedder score) or remove it; --skip-invalid skips such "
        "records))\n"
    ) in stdout
    assert "[train]   qa: task qa, 6 records," in stdout
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["datasets"][0]["records"] == 6 and summary["datasets"][0]["skipped"] == 2


def test_non_finite_hyper_parameters_and_numeric_strings(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data: {qa: qa.jsonl}\noutput: out\nlr: 5e-5\ntemperature: 2e-2\n", encoding="utf-8")
    config = TrainConfig.from_file(path)
    assert config.training.lr == 5e-5 and config.model.temperature == 0.02
    config.validate()

    path.write_text("data: {qa: qa.jsonl}\noutput: out\nlr: fast\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        TrainConfig.from_file(path)
    assert str(info.value) == f"{path}: lr must be a number, got 'fast'"

    for key, value, message in (
        ("lr", ".nan", "lr must be a finite number, got nan"),
        ("warmup", ".nan", "warmup must be a finite number, got nan"),
        ("max_grad_norm", ".inf", "max_grad_norm must be a finite number, got inf"),
        ("lr", "'inf'", "lr must be a finite number, got inf"),
    ):
        path.write_text(f"data: {{qa: qa.jsonl}}\noutput: out\n{key}: {value}\n", encoding="utf-8")
        with pytest.raises(UserError) as info:
            TrainConfig.from_file(path).validate()
        assert str(info.value) == message


# ---------------------------------------------------------------------------------------------- non-finite steps
class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * float("nan")


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch, kind):
    from llm_embedder.training import train
    from llm_embedder.training.losses import MultiTaskLoss

    original = MultiTaskLoss.per_query_loss
    calls = []

    def poisoned(self, group, task_ids=None):
        losses = original(self, group, task_ids)
        calls.append(1)
        if len(calls) == 3:  # step 3, after checkpoint-2
            return losses * float("nan") if kind == "loss" else _NanGradient.apply(losses)
        return losses

    monkeypatch.setattr(MultiTaskLoss, "per_query_loss", poisoned)
    out = tmp_path / "o"
    with pytest.raises(UserError) as info:
        train(recipe(tiny, out, steps=6))
    _, qa = tiny
    what = "the loss is nan" if kind == "loss" else "a gradient is not finite"
    assert str(info.value) == (
        f"training stopped at step 3: {what} on dataset 'qa' (task qa, {qa}); no model was written and the last "
        f"good checkpoint is {out / 'checkpoints' / 'checkpoint-2'} (check that dataset's records and scores, or "
        "lower --lr)"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "training_config.json"]
    assert not (out / "llm_embedder.json").exists() and not (out / "model.safetensors").exists()
    assert not (tmp_path / ".o.saving").exists()
    assert all(torch.isfinite(t).all() for t in weights(out / "checkpoints" / "checkpoint-2").values())

    # the checkpoint is good: the run continues from it once the cause is gone
    monkeypatch.setattr(MultiTaskLoss, "per_query_loss", original)
    train(recipe(tiny, out, steps=6, resume=True))
    assert all(torch.isfinite(t).all() for t in weights(out).values())


def test_the_reported_loss_is_the_mean_of_every_step_across_a_resume(tiny, tmp_path):
    from transformers import TrainerCallback

    from llm_embedder.training import train

    class StopAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    reference = tmp_path / "reference"
    train(recipe(tiny, reference, steps=6, log_batches=True))
    summary = json.loads((reference / "training_summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (reference / "batches-rank0.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    assert summary["metrics"]["training_loss"] == pytest.approx(sum(losses) / 6, rel=1e-12)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(recipe(tiny, out, steps=6), callbacks=[StopAfterStep3()])
    train(recipe(tiny, out, steps=6, resume=True))
    resumed = json.loads((out / "training_summary.json").read_text())
    # Hugging Face's own figure would be the mean of steps 3..6 only
    assert resumed["metrics"]["training_loss"] == pytest.approx(summary["metrics"]["training_loss"], abs=1e-6)


# ---------------------------------------------------------------------------------------------- the output folder
def _killed_rmtree(real):
    """``shutil.rmtree`` killed half-way: the weights of every checkpoint below are gone, the rest is left."""

    def rmtree(path, *args, **kwargs):
        for weights_file in Path(path).rglob("model.safetensors"):
            weights_file.unlink()
        raise KeyboardInterrupt("killed during the clean-up")

    return rmtree


def test_a_kill_during_the_final_clean_up_leaves_a_finished_run(tiny, tmp_path, monkeypatch):
    """Drill: killed while the checkpoints were deleted, every later --resume died with a TypeError traceback."""
    from llm_embedder.training import train

    out = tmp_path / "o"
    monkeypatch.setattr(shutil, "rmtree", _killed_rmtree(shutil.rmtree))
    with pytest.raises(KeyboardInterrupt):
        train(recipe(tiny, out))
    monkeypatch.undo()

    model = weights(out)  # the model is complete, whatever the clean-up left
    assert train(recipe(tiny, out, resume=True)) == str(out)  # finished: nothing to resume, no traceback
    with pytest.raises(UserError, match="already holds a trained model"):
        train(recipe(tiny, out))
    assert not (out / "checkpoints").exists() and not (tmp_path / ".o.old").exists()
    assert all(torch.equal(model[name], tensor) for name, tensor in weights(out).items())


def test_a_finished_model_with_half_deleted_checkpoints_is_finished(tiny, tmp_path):
    """A run folder left by the earlier clean-up (model saved, newest checkpoint half deleted) is not resumed."""
    from llm_embedder.training import train

    out = tmp_path / "o"
    train(recipe(tiny, out, keep_checkpoints=True))
    (out / "checkpoints" / "checkpoint-4" / "model.safetensors").unlink()
    assert train(recipe(tiny, out, resume=True)) == str(out)

    from llm_embedder.training.checkpoints import latest_checkpoint

    assert latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "checkpoint-2"


def test_a_kill_while_the_final_model_is_written_leaves_no_model(tiny, tmp_path, monkeypatch):
    """Drill: a kill during the save left a folder that loaded as a model without its task table."""
    from llm_embedder.model.embedder import LLMEmbedder
    from llm_embedder.training import train

    def killed_save(self, path, *, model_card=None):
        self.model.save(str(path))  # the weights and config are written, the task table is not
        raise KeyboardInterrupt("killed during the save")

    out = tmp_path / "o"
    monkeypatch.setattr(LLMEmbedder, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        train(recipe(tiny, out))
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing in OUT loads as a model

    train(recipe(tiny, out, resume=True))
    assert (out / "llm_embedder.json").is_file() and LLMEmbedder(out, device="cpu").use_instructions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_output_into_a_foreign_folder_is_refused(tiny, tmp_path, capsys, monkeypatch):
    model, qa = tiny
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    (mine / "config.json").write_text("{}\n")
    code, _, err = cli(["--model", model, "--data", f"qa={qa}", "--device", "cpu", "-o", str(mine)], capsys)
    assert code == 2
    assert err == (
        f"llm-embedder train: error: output folder {mine} is not empty and holds no training run or model of "
        "llm-embedder (choose a new or empty folder (-o); nothing in it was changed)\n"
    )
    assert (mine / "README.md").read_text() == "my notes\n" and sorted(p.name for p in mine.iterdir()) == [
        "README.md",
        "config.json",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    from llm_embedder.training import train

    with monkeypatch.context() as patch:
        patch.chdir(empty)
        with pytest.raises(UserError) as info:
            train(recipe(tiny, Path("."), steps=2))
    assert str(info.value) == (
        "output folder . is the current folder or contains it (the finished model replaces the output folder; pass a "
        "subfolder, e.g. -o model)"
    )

    assert train(recipe(tiny, empty, steps=2)) == str(empty)


# ---------------------------------------------------------------------------------------------- exact resume
def test_resume_with_workers_across_an_epoch_boundary_is_bit_identical(tiny, tmp_path):
    """Drill: with --num-workers 2 a resumed run ended up to 2.1e-3 away (dropout stream shifted at the epoch end)."""
    from transformers import TrainerCallback

    from llm_embedder.training import train

    class StopAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    # 8 records / 2 per step = 4 steps per epoch: checkpoint 2, resume in epoch 0, steps 5..7 in epoch 1
    settings = dict(steps=7, save_steps=2, num_workers=2)
    reference = tmp_path / "reference"
    train(recipe(tiny, reference, **settings))
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(recipe(tiny, out, **settings), callbacks=[StopAfterStep3()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "model.safetensors").exists()
    train(recipe(tiny, out, resume=True, **settings))
    expected, resumed = weights(reference), weights(out)
    assert expected.keys() == resumed.keys()
    assert [name for name in expected if not torch.equal(expected[name], resumed[name])] == []


# ---------------------------------------------------------------------------------------------- memory
def _collator(embedder, preprocess=None, fit_texts=None):
    from llm_embedder.training.collator import GroupCollator

    return GroupCollator(
        preprocess or embedder.model.preprocess,
        instruction=embedder.instruction,
        task_names=["convsearch", "qa"],
        query_max_length=24,
        key_max_length=24,
        fit_texts=fit_texts or embedder.fit_texts,
        tail_tasks=["convsearch"],
    )


def _items(query: str, keys: list[str], tasks=("convsearch", "qa")) -> list[dict]:
    return [
        {"dataset": t, "task": t, "query": query, "keys": keys, "teacher_scores": [0.1, 0.2], "id": str(i)}
        for i, t in enumerate(tasks)
    ]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k])
        if isinstance(a[k], torch.Tensor)
        else _same(a[k], b[k])
        if isinstance(a[k], dict)
        else a[k] == b[k]
        for k in a
    )


@pytest.mark.parametrize("tasks", [("convsearch", "convsearch"), ("qa", "qa"), ("convsearch", "qa")])
def test_collator_output_is_unchanged_for_normal_inputs(embedder, monkeypatch, tasks):
    from llm_embedder.training import collator as collator_module

    ending = " Speaker 1: where does the north saskatchewan river end?"
    items = _items("alpha beta gamma " * 40 + ending, ["river delta " * 50, "a short key"], tasks)
    batch = _collator(embedder)(items)
    monkeypatch.setattr(collator_module, "MAX_CHARS_PER_TOKEN", 10**9)
    assert _same(batch, _collator(embedder)(items))


def test_collator_cuts_a_huge_field_by_characters_before_the_tokenizer(embedder):
    from llm_embedder.training.collator import MAX_CHARS_PER_TOKEN

    seen: list[int] = []

    def preprocess(texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return embedder.model.preprocess(texts, **kwargs)

    def fit_texts(texts, task, side, max_length):
        seen.extend(len(t) for t in texts)
        return embedder.fit_texts(texts, task, side, max_length)

    ending = " Speaker 1: where does the north saskatchewan river end?"
    huge = _items("alpha beta " * 1_000_000 + ending, ["river delta " * 1_000_000, "a short key"])
    batch = _collator(embedder, preprocess, fit_texts)(huge)
    assert max(seen) <= 24 * MAX_CHARS_PER_TOKEN + len(embedder.instruction("convsearch", "query"))
    # the same tokens as the texts give when they are merely long: convsearch keeps the end, qa and keys the start
    long = _items("alpha beta " * 300 + ending, ["river delta " * 300, "a short key"])
    assert _same(batch, _collator(embedder)(long))


# ---------------------------------------------------------------------------------------------- one TrainConfig
def test_the_pipeline_train_section_is_a_training_recipe(tmp_path):
    from llm_embedder.pipeline.config import TRAIN_DEFAULTS, load_config

    def recipe_with(train: str) -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(f"tasks: {{qa: {{train: t.jsonl}}}}\ntrain:\n{train}", encoding="utf-8")
        return path

    config = load_config(recipe_with("  lr: 5e-5\n  weight-decay: 0.1\n  steps: 7\n"))
    assert config.train == {**TRAIN_DEFAULTS, "lr": 5e-5, "weight_decay": 0.1, "steps": 7}
    # the defaults are the former pipeline section's, so the train stage's fingerprint of an unchanged recipe stays
    old = {
        "steps": 100,
        "batch_size": 16,
        "group_size": 4,
        "lr": 2e-5,
        "warmup": 0.1,
        "query_max_length": 128,
        "key_max_length": 128,
        "grad_cache_chunk": None,
        "dtype": "fp32",
        "save_steps": 50,
    }
    default = load_config(recipe_with("  {}\n"))
    assert default.fingerprint(default.train) == default.fingerprint(old)

    path = recipe_with("  stepz: 3\n")
    with pytest.raises(UserError, match=rf"^{path}: train: unknown key\(s\) stepz \(known: "):
        load_config(path)
    path = recipe_with("  steps: abc\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: train: steps must be a positive integer, got 'abc'"
    path = recipe_with("  data_weights: {chat: 2}\n")
    with pytest.raises(UserError, match=r": train: --data-weight for unknown dataset\(s\) chat \(datasets: qa\)"):
        load_config(path)
    path = recipe_with("  output: elsewhere\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: train: output cannot be set here (the recipe sets them itself)"


def _folder(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    return path


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # killed before OUT was moved aside: the complete model is published, the run folder deleted
        ({"o": ["checkpoints/c"], ".o.saving": ["llm_embedder.json", "training_summary.json"]}, {"o": "model"}),
        # killed between the two renames
        ({".o.old": ["checkpoints/c"], ".o.saving": ["llm_embedder.json", "training_summary.json"]}, {"o": "model"}),
        # killed while the old run folder was deleted
        ({"o": ["llm_embedder.json", "training_summary.json"], ".o.old": ["checkpoints/c"]}, {"o": "model"}),
        # killed while the model was written: the run folder stays as it was, ready to resume
        ({"o": ["checkpoints/c"], ".o.saving": ["config.json"]}, {"o": "run"}),
    ],
)
def test_recover_finishes_or_undoes_an_interrupted_publish(tmp_path, before, after):
    from llm_embedder.training.run_folder import recover

    for name, files in before.items():
        _folder(tmp_path / name, *files)
    recover(tmp_path / "o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    expected = ["llm_embedder.json", "training_summary.json"] if after["o"] == "model" else ["checkpoints"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == expected
