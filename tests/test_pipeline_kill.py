"""kill -9 anywhere in ``llm-embedder pipeline``: the same command, rerun, ends with what an uninterrupted run makes.

A tiny recipe (8 chat records scored by a 2-layer random Llama, 8 tool records, 4 training steps of the bundled
MiniLM with a checkpoint every step, evaluation with the LLM) runs once without interruption; its run folder is
set aside and the same command is then killed with SIGKILL during score, during train and during eval, and rerun
after each kill. The scored files, the trained weights, the evaluation reports and the summary must be identical
(timings apart). Same output folder for both, so the paths recorded inside the reports are comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

#: keys whose values are wall-clock measurements, different in every run
TIMING_KEYS = {"seconds", "retrieval_seconds", "downstream_seconds"}


def _recipe(tmp_path: Path, data_dir: Path, lm: Path) -> Path:
    toy = data_dir / "toy"
    recipe = {
        "name": "kill-drill",
        "output_dir": "run",
        "lm": str(lm),
        "seed": 0,
        "tasks": {
            "chat": {"train": str(toy / "chat.jsonl"), "dev": str(toy / "chat.jsonl")},
            "tool": {"train": str(toy / "tool.jsonl"), "dev": str(toy / "tool.jsonl")},
        },
        "score": {"token_budget": 2048, "max_key_tokens": 32},
        "train": {
            "steps": 4,
            "batch_size": 2,
            "group_size": 2,
            "lr": 1e-4,
            "query_max_length": 32,
            "key_max_length": 32,
            "save_steps": 1,
        },
        "eval": {"retrievers": ["bm25"], "downstream": True, "downstream_limit": 4},
        "variants": {"full": {}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "llm_embedder.cli.main", "pipeline", str(recipe), "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LLM_EMBEDDER_PROGRESS": "off"}


def _run_until(cwd: Path, recipe: Path, log: Path, kill_when: Callable[[Path, str], bool] | None) -> int | None:
    """Run the pipeline; SIGKILL it as soon as ``kill_when(run_folder, log_text)`` holds. Returns the exit code, or
    None when it was killed."""
    with open(log, "w") as handle:
        process = subprocess.Popen(_command(recipe), cwd=cwd, env=_env(), stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if kill_when is not None and kill_when(cwd / "run", log.read_text(errors="replace")):
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return None
                time.sleep(0.01)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode


def _scoring(run: Path, _: str) -> bool:
    return any(run.glob("data/*/*.scored.jsonl.partial"))


def _training(run: Path, _: str) -> bool:
    # a complete checkpoint (its trainer state is written last): the rerun resumes from it, not from step 0
    return any(run.glob("models/full/checkpoints/checkpoint-*/trainer_state.json"))


def _evaluating(_: Path, log: str) -> bool:
    return "[run]  eval-" in log


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _outputs(run: Path) -> dict[str, object]:
    """What a user keeps from a run: scored data and weights (hashes), reports and summary (timings removed)."""
    out: dict[str, object] = {}
    for path in sorted(run.glob("data/*/*.jsonl")) + sorted(run.glob("models/*/*.safetensors")):
        out[str(path.relative_to(run))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in [*sorted(run.glob("eval/*.json")), run / "summary.json"]:
        out[str(path.relative_to(run))] = _without_timings(json.loads(path.read_text()))
    summary = (run / "summary.md").read_text().split("Stage times")[0]
    out["summary.md"] = summary
    return out


@pytest.mark.slow
def test_kill_9_during_score_train_and_eval_then_rerun_gives_the_same_outputs(tmp_path, data_dir):
    from lm_helpers import make_tiny_lm

    lm = tmp_path / "tiny-lm"
    make_tiny_lm(lm)
    recipe = _recipe(tmp_path, data_dir, lm)

    assert _run_until(tmp_path, recipe, tmp_path / "reference.log", None) == 0, (tmp_path / "reference.log").read_text()
    reference = _outputs(tmp_path / "run")
    assert {"data/chat/train.scored.jsonl", "models/full/model.safetensors", "eval/chat.json"} <= set(reference)
    shutil.move(tmp_path / "run", tmp_path / "reference")

    logs = []
    for stage, kill_when in (("score", _scoring), ("train", _training), ("eval", _evaluating)):
        log = tmp_path / f"killed-during-{stage}.log"
        logs.append(log)
        code = _run_until(tmp_path, recipe, log, kill_when)
        assert code is None, f"the run ended (exit {code}) before it could be killed during {stage}:\n{log.read_text()}"
    final = tmp_path / "rerun.log"
    assert _run_until(tmp_path, recipe, final, None) == 0, final.read_text()
    # each rerun skipped what the killed run had finished and continued what it had started
    after_score, after_train, after_eval = (path.read_text() for path in (*logs[1:], final))
    assert "[skip] build-chat" in after_score and "[run]  score-chat-train" in after_score
    assert "[skip] score-chat-dev" in after_train and "[train] resuming from" in after_train
    assert "[skip] train-full" in after_eval and "[run]  eval-chat" in after_eval

    assert _outputs(tmp_path / "run") == reference
