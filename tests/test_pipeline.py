"""The end-to-end pipeline on a tiny recipe: stages run, write their outputs, and are skipped when rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from llm_embedder.cli.main import main
from llm_embedder.pipeline.config import load_config
from llm_embedder.pipeline.runner import Pipeline
from llm_embedder.pipeline.training import variant_flags


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
    # killed after the model was saved but before its stage was recorded: the model is kept, not retrained
    # (before: rmtree'd as "a model from an older recipe" and trained again)
    (run / "state" / "train-full.json").unlink()
    weights = (run / "models" / "full" / "model.safetensors").read_bytes()
    logs.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("llm_embedder.pipeline.training.train_variant", lambda *a: pytest.fail("retrained"))
        Pipeline(load_config(recipe), log=logs.append).run()
    assert f"[train] {run}/models/full holds the finished model of this recipe; keeping it" in logs
    assert [line for line in logs if line.startswith("[run]")] == ["[run]  train-full"], "eval kept: same weights"
    assert (run / "models" / "full" / "model.safetensors").read_bytes() == weights
    assert "started" not in (run / "summary.md").read_text(), "the start marker is not a stage"


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
    check = load_config(Path(__file__).resolve().parents[1] / "recipes" / "six-task.yaml")
    assert set(check.tasks) == set(repro.tasks) and check.tasks["icl"].teacher == "gemma3"
    assert check.variants["qa_instructed"] == {
        "anchor_weight": 4.0,
        "anchor_task_weights": {"tool": 0.0},
        "pool_instructions": False,
    }
    assert check.variants["tool_tau_reference"] == {
        **check.variants["qa_instructed"],
        "tasks_file": "tasks/qa-plain.yaml",
    }
    assert check.variants["convsearch_x1"] == {**check.variants["qa_instructed"], "tasks_file": "tasks/six-task.yaml"}
    assert check.variants["full"] == {**check.variants["convsearch_x1"], "data_weights": {"convsearch": 2}}
    plain = variant_flags(check, check.variants["tool_tau_reference"], {}, Path("out"))["tasks_file"]
    assert yaml.safe_load(Path(plain).read_text()) == {"qa": {"query_instruction": "", "key_instruction": ""}}
    recipe = variant_flags(check, check.variants["full"], {}, Path("out"))["tasks_file"]
    assert yaml.safe_load(Path(recipe).read_text()) == {
        "qa": {"query_instruction": "", "key_instruction": ""},
        "tool": {"training": {"temperature": 0.05}},
    }
    assert check.variants["no_anchor"] == {"anchor_weight": 0.0}
    # the recipe's other seeds (YAML merge keys): each trains as `full` but for its seed, and is a model of its own
    from llm_embedder.pipeline.runner import _with_task_table

    assert variant_flags(check, check.variants["full"], {}, Path("out"))["seed"] == check.seed == 0
    for seed in (1, 2):
        variant = check.variants[f"full_seed{seed}"]
        assert variant == {**check.variants["full"], "seed": seed}
        assert variant_flags(check, variant, {}, Path("out"))["seed"] == seed
        assert _with_task_table(check, variant) != _with_task_table(check, check.variants["full"])


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


def test_variants_option_trains_only_the_named_variants(tmp_path, data_dir, monkeypatch, capsys):
    """``pipeline --variants full`` trains (and evaluates) the recipe's model alone, not its ablations; a name the
    recipe lacks is one line that lists the recipe's variants, before any stage runs."""
    # yaml.safe_dump sorts the keys: the recipe's order is ablation, full, other
    recipe = _recipe(tmp_path, data_dir, variants={"full": {}, "ablation": {"anchor_weight": 1.0}, "other": {}})
    trained: list[str] = []

    def fake_train(config, variant, overrides, data, out):
        trained.append(variant)
        return {"variant": variant, "model": str(out)}

    monkeypatch.setattr("llm_embedder.pipeline.training.train_variant", fake_train)
    assert main(["pipeline", str(recipe), "--stages", "build,train", "--variants", "other, full"]) == 0
    assert trained == ["full", "other"], "the recipe's order, the ablation left out"
    trained.clear()
    assert main(["pipeline", str(recipe), "--stages", "train"]) == 0
    assert trained == ["ablation"], "the others are kept: the same inputs"
    capsys.readouterr()
    assert main(["pipeline", str(recipe), "--variants", "full,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "llm-embedder pipeline: error: --variants: unknown variant(s) nope "
        "(the recipe's variants are ablation, full, other)"
    )
    assert not (tmp_path / "run" / "eval").exists()


def test_a_number_retyped_as_a_float_does_not_retrain_a_variant(tmp_path, data_dir, monkeypatch):
    """``data_weights: {convsearch: 2}`` and ``{convsearch: 2.0}`` train the same model. Before, the two had
    different fingerprints, so retyping the weight deleted the finished model and trained it again; another value
    still retrains."""
    trained: list[str] = []

    def fake_train(config, variant, overrides, data, out):
        trained.append(variant)
        return {"variant": variant, "model": str(out)}

    monkeypatch.setattr("llm_embedder.pipeline.training.train_variant", fake_train)
    for weight, times in ((2.0, 1), (2, 1), (3, 2), (3.0, 2)):
        variants = {"full": {"data_weights": {"tool": weight}, "anchor_weight": 4.0}}
        Pipeline(load_config(_recipe(tmp_path, data_dir, variants=variants)), log=lambda _: None).train()
        assert len(trained) == times, f"data_weights {{tool: {weight!r}}}: trained {len(trained)} times"
    from llm_embedder.training.config import flag_type
    from llm_embedder.utils.dataclass_build import floats_as_declared

    # a declared int stays an int (recipes written in their declared types keep their fingerprints)
    assert type(floats_as_declared(1, flag_type("seed"))) is int
    assert type(floats_as_declared({"tool": 0}, flag_type("anchor_task_weights"))["tool"]) is float
    assert type(floats_as_declared({"tool": 256}, flag_type("task_key_max_length"))["tool"]) is int


def test_a_variants_task_file_is_read_beside_the_recipe_and_its_table_retrains(tmp_path, data_dir, monkeypatch, capsys):
    """``tasks_file`` in a variant (recipes/six-task.yaml: qa without instructions) resolves against the recipe's
    folder, as data paths do, not the working directory; a change of the table a variant trains with (its file or
    the built-in table) retrains it, a comment does not; a missing file is one line before any stage runs."""
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    plain = tasks_dir / "plain.yaml"
    plain.write_text('qa:\n  query_instruction: ""\n  key_instruction: ""\n', encoding="utf-8")
    variants = {"full": {"tasks_file": "tasks/plain.yaml"}, "paper": {}}
    config = load_config(_recipe(tmp_path, data_dir, variants=variants))
    monkeypatch.chdir(data_dir)  # anywhere but the recipe's folder
    flags = variant_flags(config, config.variants["full"], {"tool": "t.jsonl"}, tmp_path / "out")
    assert flags["tasks_file"] == str(plain)
    assert "tasks_file" not in variant_flags(config, {}, {"tool": "t.jsonl"}, tmp_path / "out")
    trained: list[str] = []

    def fake_train(config, variant, overrides, data, out):
        trained.append(variant)
        return {"variant": variant, "model": str(out)}

    monkeypatch.setattr("llm_embedder.pipeline.training.train_variant", fake_train)
    Pipeline(config, log=lambda _: None).train()
    assert trained == ["full", "paper"]
    Pipeline(config, log=lambda _: None).train()
    assert trained == ["full", "paper"], "nothing changed: nothing retrained"
    plain.write_text('qa:\n  query_instruction: "Q: "\n  key_instruction: ""\n', encoding="utf-8")
    Pipeline(config, log=lambda _: None).train()
    assert trained == ["full", "paper", "full"], "the file's content changed: that variant only is retrained"
    plain.write_text('# a comment\nqa:\n  query_instruction: "Q: "   # another\n  key_instruction: ""\n', "utf-8")
    Pipeline(config, log=lambda _: None).train()
    assert trained == ["full", "paper", "full"], "the same table in other words: nothing retrained"
    from llm_embedder.tasks.registry import TASKS

    spec = TASKS.get("tool")
    TASKS.update_from_mapping({"tool": {"query_max_tokens": 7}}, source="test")
    try:
        Pipeline(config, log=lambda _: None).train()
    finally:
        TASKS.register(spec, overwrite=True)
    assert trained[3:] == ["full", "paper"], "a new default in the table every variant reads: both retrain"

    missing = _recipe(tmp_path, data_dir, variants={"full": {"tasks_file": "tasks/nope.yaml"}})
    assert main(["pipeline", str(missing)]) == 2
    err = _one_line_error(capsys)
    assert "variants.full" in err and str(tasks_dir / "nope.yaml") in err


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


# ---------------------------------------------------------------------------------------------- drills (issue 11)
def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("seed: abc", "recipe.yaml: 'seed' must be an integer, got 'abc'"),
        (
            "variants: {full: x}",
            "recipe.yaml: variants.full must be a mapping of training overrides (or {}), got 'x' "
            "(e.g. variants: {full: {}, no_instructions: {use_instructions: false}})",
        ),
        ("variants: [full]", "recipe.yaml: 'variants' must map variant names to training overrides, got ['full']"),
        ("train: {steps: abc}", "recipe.yaml: train: steps must be a positive integer, got 'abc'"),
        ("train: {lr: fast}", "recipe.yaml: train: lr must be a number, got 'fast'"),
        ("eval: {downstream: maybe}", "recipe.yaml: eval: 'downstream' must be true or false, got 'maybe'"),
        ("score: {max_key_tokens: 1.5}", "recipe.yaml: score: 'max_key_tokens' must be an integer, got 1.5"),
        (
            "variants: {full: {lr: abc}}",
            "recipe.yaml: variants.full: lr must be a number, got 'abc'",
        ),
        (
            "variants: {full: {}, bad: {weight_decay: -1}}",
            "recipe.yaml: variants.bad: weight_decay must be >= 0, got -1",
        ),
        (
            "variants: {full: {}, w: {stepz: 3}}",
            "recipe.yaml: variants.w: unknown key(s) stepz",
        ),
        (
            "variants: {full: {}, ../../victim: {}}",
            "recipe.yaml: variants: invalid variant name '../../victim' "
            "(use letters, digits, '_' or '-' (it becomes a folder name inside the run folder))",
        ),
        ("variants: {full: {}, /tmp/abs: {}}", "recipe.yaml: variants: invalid variant name '/tmp/abs'"),
        ("variants: {full: {}, 7: {}}", "recipe.yaml: variants: invalid variant name 7"),
    ],
)
def test_whole_recipe_is_checked_before_any_stage(tmp_path, data_dir, capsys, recipe, expected):
    """Drill: type errors (``seed: abc``, ``variants: {full: x}``, bad values in ``train:`` or a variant) were
    tracebacks, or surfaced only when the train stage started after build and score. Now: one line, exit 2, and
    nothing has run (no run folder)."""
    toy = data_dir / "toy" / "tool.jsonl"
    base = f"output_dir: {tmp_path / 'run'}\ntasks: {{tool: {{train: {toy}, dev: {toy}}}}}\n"
    path = _write(tmp_path, base + recipe + "\n")
    assert main(["pipeline", str(path)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"llm-embedder pipeline: error: {path.parent}/{expected}"), err
    assert not (tmp_path / "run").exists()


def test_yaml_exponent_without_dot_is_a_number(tmp_path, data_dir):
    """``lr: 5e-5`` is a string to YAML 1.1; the recipe reads it as the number it plainly is."""
    toy = data_dir / "toy" / "tool.jsonl"
    path = _write(tmp_path, f"tasks: {{tool: {{train: {toy}, dev: {toy}}}}}\ntrain: {{lr: 5e-5}}\n")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "5e-5"
    assert load_config(path).train["lr"] == 5e-5


def test_task_names_from_a_tasks_file_are_checked_as_path_names(tmp_path, capsys):
    path = _write(tmp_path, "tasks: {'../up': {train: x.jsonl, dev: x.jsonl}}\n")
    assert main(["pipeline", str(path)]) == 2
    assert "recipe.yaml: tasks: invalid task name '../up'" in _one_line_error(capsys)


def test_a_variant_name_never_reaches_outside_the_run_folder(tmp_path, data_dir, capsys):
    """Drill: variant ``../../victim`` made the train stage rmtree a user's model folder and retrain there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "llm_embedder.json").write_text("{}")
    (victim / "notes.txt").write_text("mine")
    recipe = _recipe(tmp_path, data_dir, variants={"full": {}, "../victim": {}})
    assert main(["pipeline", str(recipe)]) == 2
    assert "invalid variant name '../victim'" in _one_line_error(capsys)
    assert sorted(p.name for p in victim.iterdir()) == ["llm_embedder.json", "notes.txt"]
    assert not (tmp_path / "run").exists()


def test_train_stage_deletes_only_inside_the_run_folder(tmp_path, data_dir):
    """The guard under the name check: even a folder reached through a symbolic link is not removed."""
    from llm_embedder.errors import UserError
    from llm_embedder.pipeline.training import train_variant

    config = load_config(_recipe(tmp_path, data_dir))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "llm_embedder.json").write_text("{}")
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "full").symlink_to(outside, target_is_directory=True)
    for target in (models / "full", outside):
        with pytest.raises(UserError, match="refusing to delete .*: it is not a folder inside the run folder"):
            train_variant(config, "full", {}, {}, target)
    assert (outside / "llm_embedder.json").is_file()


def test_remove_tree_inside(tmp_path):
    from llm_embedder.errors import UserError
    from llm_embedder.utils.paths import remove_tree_inside

    root = tmp_path / "run"
    (root / "models" / "full").mkdir(parents=True)
    for bad in (root, tmp_path, root / ".." / "run", root / "models" / ".." / ".."):
        with pytest.raises(UserError):
            remove_tree_inside(bad, root)
    remove_tree_inside(root / "models" / "full", root)
    assert sorted(p.name for p in root.rglob("*")) == ["models"]


def test_read_only_output_folder_is_one_line(tmp_path, data_dir, monkeypatch, capsys):
    """Drill: a read-only output folder gave a PermissionError / OSError traceback (simulated: we run as root)."""
    import errno
    import os

    readonly = tmp_path / "ro"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(readonly)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    recipe = _recipe(tmp_path, data_dir)
    assert main(["pipeline", str(recipe), "-o", str(readonly / "run")]) == 2
    assert _one_line_error(capsys) == (
        f"llm-embedder pipeline: error: {readonly}/run/state: read-only file system "
        "(choose an output folder on a writable file system)"
    )


@pytest.mark.parametrize(
    ("code", "what", "hint"),
    [
        ("ENOSPC", "no space left on device", "free some space or choose an output folder on another disk"),
        ("EACCES", "permission denied", "check its permissions; outputs must go to a folder you can write to"),
    ],
)
def test_disk_full_while_writing_is_one_line(tmp_path, data_dir, monkeypatch, capsys, code, what, hint):
    """Drill: a full disk (simulated: every fsync fails with ENOSPC) gave a traceback; now one line naming the file."""
    import errno
    import os

    def fsync(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", fsync)
    recipe = _recipe(tmp_path, data_dir)
    assert main(["pipeline", str(recipe), "--stages", "build"]) == 2
    assert _one_line_error(capsys) == (
        f"llm-embedder pipeline: error: {tmp_path}/run/data/tool/train.jsonl: {what} ({hint})"
    )
    assert not list((tmp_path / "run" / "data" / "tool").glob(".*tmp")), "no temporary file left behind"


def test_other_os_errors_keep_their_traceback(monkeypatch):
    """An OSError that is not about the output location (a bug, a lost device) is not hidden behind one line."""
    import errno

    from llm_embedder.cli.main import os_error_line

    assert os_error_line(OSError(errno.EIO, "I/O error")) is None
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == (
        "writing the output: no space left on device (free some space or choose an output folder on another disk)"
    )


def test_a_second_pipeline_in_the_same_run_folder_is_refused(tmp_path, data_dir, capsys):
    """Two pipelines in one run folder would train into the same checkpoints; the second is refused in one line."""
    from llm_embedder.utils.files import exclusive_lock

    recipe = _recipe(tmp_path, data_dir)
    with exclusive_lock(tmp_path / "run", what="pipeline run folder"):
        assert main(["pipeline", str(recipe)]) == 2
    assert _one_line_error(capsys) == (
        f"llm-embedder pipeline: error: {tmp_path}/run: another run (pid {os.getpid()}) is writing this pipeline run "
        "folder (wait for it to finish, or choose another output path)"
    )
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["state"], "no stage ran"


def test_stdlib_tools_hold_no_memory_addresses():
    """A default value's repr ("<function copy2 at 0x7f...>") must not make the demo's data differ between runs."""
    import re

    from llm_embedder.pipeline.stdlib_data import build_tool_task

    texts = [row["text"] for row in build_tool_task()["corpus"]]
    assert any("copy_function=<function copy2>" in text for text in texts)
    assert not any(re.search(r" at 0x[0-9a-fA-F]+", text) for text in texts)
