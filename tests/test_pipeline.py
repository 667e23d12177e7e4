"""The end-to-end pipeline on a tiny recipe: stages run, write their outputs, and are skipped when rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_embedder.cli.main import main
from llm_embedder.pipeline.config import load_config
from llm_embedder.pipeline.runner import Pipeline


def _recipe(tmp_path: Path, data_dir: Path, **extra) -> Path:
    toy = data_dir / "toy" / "tool.jsonl"
    recipe = {
        "name": "tiny",
        "output_dir": str(tmp_path / "run"),
        "tasks": {"tool": {"train": str(toy), "dev": str(toy)}},
        "train": {"steps": 2, "batch_size": 4, "group_size": 2, "query_max_length": 32, "key_max_length": 32},
        "eval": {"retrievers": ["bm25"], "downstream": False},
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.slow
def test_pipeline_runs_and_resumes(tmp_path, data_dir):
    recipe = _recipe(tmp_path, data_dir)
    logs: list[str] = []
    summary = Pipeline(load_config(recipe), log=logs.append).run()
    run = tmp_path / "run"
    for name in ("summary.md", "summary.json", "summary.png", "models/full/llm_embedder.json", "eval/tool.json"):
        assert (run / name).is_file(), name
    assert {"bm25", "base", "full"} <= set(summary["results"]["tool"]["results"])
    assert any(line.startswith("[run]  train-full") for line in logs)
    # a second run with the same recipe skips every stage
    logs.clear()
    Pipeline(load_config(recipe), log=logs.append).run()
    assert [line for line in logs if line.startswith("[run]")] == []
    assert json.loads((run / "summary.json").read_text())["columns"]


def test_recipe_errors_are_one_line(tmp_path, data_dir, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: {tool: {train: x.jsonl, dev: x.jsonl}}\ntrain: {stepz: 3}\n", encoding="utf-8")
    assert main(["pipeline", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key(s) stepz" in err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("tasks: {nope: {train: x.jsonl, dev: x.jsonl}}\n", encoding="utf-8")
    assert main(["pipeline", str(unknown)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_demo_recipe_is_valid():
    from importlib import resources

    with resources.as_file(resources.files("llm_embedder.pipeline").joinpath("demo.yaml")) as path:
        config = load_config(path)
    assert set(config.tasks) == {"tool", "lrlm"} and "full" in config.variants
    repro = load_config(Path(__file__).resolve().parents[1] / "recipes" / "reproduce.yaml")
    assert set(repro.tasks) == {"qa", "convsearch", "chat", "lrlm", "icl", "tool"}
    assert {"full", "no_llm_reward", "no_instructions", "no_homogeneous", "kl_not_stabilized"} <= set(repro.variants)


def test_variant_task_subset(tmp_path, data_dir, monkeypatch, capsys):
    """A variant's ``tasks`` key trains it on a subset (w/o LLM reward: labelled tasks only); bad subsets fail early."""
    toy = data_dir / "toy"
    tasks = {t: {"train": str(toy / f"{t}.jsonl"), "dev": str(toy / f"{t}.jsonl")} for t in ("tool", "convsearch")}
    variants = {"full": {}, "no_llm_reward": {"hard_labels": True, "tasks": ["tool"]}}
    config = load_config(_recipe(tmp_path, data_dir, tasks=tasks, variants=variants))
    seen: dict[str, tuple[dict, dict]] = {}

    def fake_train(config, variant, overrides, data, out):
        seen[variant] = (overrides, data)
        return {"variant": variant, "model": str(out)}

    monkeypatch.setattr("llm_embedder.pipeline.training.train_variant", fake_train)
    Pipeline(config, log=lambda _: None).train()
    assert set(seen["full"][1]) == {"tool", "convsearch"} and seen["full"][0] == {}
    assert set(seen["no_llm_reward"][1]) == {"tool"} and seen["no_llm_reward"][0] == {"hard_labels": True}

    bad = _recipe(tmp_path, data_dir, tasks=tasks, variants={"full": {}, "x": {"tasks": ["chat"]}})
    assert main(["pipeline", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "variants.x.tasks must be a non-empty list of the recipe's tasks" in err


def test_a_task_can_have_its_own_teacher(tmp_path, data_dir, monkeypatch):
    """``teacher:`` scores that task with another LLM (icl: gemma3); the others and the reader keep ``lm``."""
    toy = data_dir / "toy"
    tasks = {t: {"train": str(toy / f"{t}.jsonl"), "dev": str(toy / f"{t}.jsonl")} for t in ("chat", "icl")}
    tasks["icl"]["teacher"] = "strong-lm"
    config = load_config(_recipe(tmp_path, data_dir, tasks=tasks, lm="reader-lm"))
    loaded: list[str] = []
    scored: dict[str, str] = {}

    def fake_load(name, **_):
        loaded.append(name)
        return name, None

    class FakeScorer:
        def __init__(self, model, tokenizer, *, task, **_):
            self.model, self.task = model, task

    def fake_score_file(src, dst, scorer, options):
        scored[f"{scorer.task}/{Path(src).stem}"] = scorer.model
        assert options["lm"] == scorer.model
        Path(dst).write_text(Path(src).read_text())
        return {"output": str(dst)}

    monkeypatch.setattr("llm_embedder.lm.loading.load_causal_lm", fake_load)
    monkeypatch.setattr("llm_embedder.reward.scorer.RewardScorer", FakeScorer)
    monkeypatch.setattr("llm_embedder.reward.resumable.score_file", fake_score_file)
    pipeline = Pipeline(config, log=lambda _: None)
    pipeline.build()
    pipeline.score()
    assert {key: lm for key, lm in scored.items() if key.startswith("icl/")} == {"icl/train": "strong-lm"}
    assert scored["chat/train"] == scored["chat/dev"] == "reader-lm"
    assert sorted(loaded) == ["reader-lm", "strong-lm"], "each LLM is loaded once"
    assert pipeline.lm() == ("reader-lm", None)
