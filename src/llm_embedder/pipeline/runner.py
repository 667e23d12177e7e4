"""``llm-embedder pipeline``: build -> score (LLM feedback) -> train (full recipe + ablations) -> evaluate -> report.

Every stage is skipped when its output is already complete for the same inputs (see :mod:`.stages`); scoring and
training also resume from their own partial outputs, so a killed run restarted with the same command continues.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.lm.precision import default_device, resolve_dtype
from llm_embedder.pipeline.build import build_task
from llm_embedder.pipeline.config import PipelineConfig
from llm_embedder.pipeline.stages import StageTracker
from llm_embedder.pipeline.training import variant_tasks_file
from llm_embedder.tasks.registry import TASKS
from llm_embedder.training.config import flag_type
from llm_embedder.utils.dataclass_build import floats_as_declared
from llm_embedder.utils.files import exclusive_lock, write_json
from llm_embedder.utils.paths import check_name


class Pipeline:
    """One run of a recipe in ``config.output_dir``."""

    def __init__(
        self, config: PipelineConfig, *, log: Callable[[str], None] = print, device: str | None = None
    ) -> None:
        self.config = config
        self.root = Path(config.output_dir)
        self.tracker = StageTracker(self.root, log=log)
        self.log = log
        self.device = device
        self._lms: dict[str, tuple[Any, Any]] = {}
        for task in config.tasks:
            check_name(task, what="task", where="recipe")
            TASKS.get(task)  # unknown task names fail before any work
        for variant in config.variants:
            check_name(variant, what="variant", where="recipe")  # it becomes RUN/models/<variant>

    # ------------------------------------------------------------------ helpers
    def lm(self, name: str | None = None) -> tuple[Any, Any]:
        """An LLM by name, default the recipe's ``lm`` (each loaded once, shared by scoring and evaluation)."""
        name = name or self.config.lm
        if name not in self._lms:
            from llm_embedder.lm.loading import load_causal_lm

            self._lms[name] = load_causal_lm(name, dtype=self.config.score.dtype, device=self.device)
        return self._lms[name]

    def data_file(self, task: str, split: str) -> Path:
        """The scored file when the task has an LLM reward and it was scored, else the built file."""
        scored = self.root / "data" / task / f"{split}.scored.jsonl"
        return scored if scored.is_file() else self.root / "data" / task / f"{split}.jsonl"

    def needs_scores(self, task: str, split: str) -> bool:
        """Train records when the task's loss uses teacher scores; dev records when they lack labelled positives."""
        spec = TASKS.get(task)
        if spec.reward.kind == "none":
            return False
        if split == "train":
            return spec.training.needs_teacher_scores
        return self.config.score.score_dev and not _has_positives(self.root / "data" / task / f"{split}.jsonl")

    # ------------------------------------------------------------------ stages
    def build(self) -> dict[str, Any]:
        out = {}
        for task, data in self.config.tasks.items():
            fp = self.config.fingerprint(data, self.config.seed, self.config.lm if data.source == "stdlib_lrlm" else "")
            out[task] = self.tracker.run(f"build-{task}", fp, lambda t=task, d=data: build_task(self.config, t, d))
        return out

    def score(self) -> None:
        from llm_embedder.reward.resumable import score_file
        from llm_embedder.reward.scorer import RewardScorer

        cfg = self.config.score
        for task, data in self.config.tasks.items():
            teacher = data.teacher or self.config.lm
            for split in ("train", "dev"):
                if not self.needs_scores(task, split):
                    continue
                src = self.root / "data" / task / f"{split}.jsonl"
                dst = self.root / "data" / task / f"{split}.scored.jsonl"
                fp = self.config.fingerprint(cfg, teacher, _file_stamp(src))

                def work(src: Path = src, dst: Path = dst, task: str = task, teacher: str = teacher) -> dict[str, Any]:
                    model, tokenizer = self.lm(teacher)
                    scorer = RewardScorer(
                        model,
                        tokenizer,
                        task=task,
                        max_key_tokens=cfg.max_key_tokens,
                        token_budget=cfg.token_budget,
                        max_batch_size=cfg.max_batch_size,
                    )
                    result = score_file(
                        src,
                        dst,
                        scorer,
                        options={"lm": teacher, "dtype": resolve_dtype(cfg.dtype, self.device or default_device())},
                    )
                    return _jsonable(result)

                self.tracker.run(f"score-{task}-{split}", fp, work)

    def train(self) -> dict[str, str]:
        from llm_embedder.pipeline.training import train_variant

        models = {}
        for variant, variant_config in self.config.variants.items():
            out = self.root / "models" / variant
            overrides = dict(variant_config or {})
            tasks = overrides.pop("tasks", None) or list(self.config.tasks)
            data = {task: str(self.data_file(task, "train")) for task in tasks}
            fp = self.config.fingerprint(
                self.config.train,
                _with_task_table(self.config, overrides),
                self.config.encoder,
                self.config.seed,
                {t: _file_stamp(Path(p)) for t, p in data.items()},
            )

            def work(v: str = variant, o: dict = overrides, out: Path = out, data: dict = data, fp: str = fp) -> Any:
                # not state/*.json: those are the completed stages (and their times in the summary)
                started = self.tracker.state_dir / "started" / f"train-{v}.json"
                finished = (out / "llm_embedder.json").is_file() and not (out / "checkpoints").is_dir()
                if finished and _recorded_fingerprint(started) == fp:
                    # killed after the model was saved but before the stage was recorded: it is this recipe's model
                    self.log(f"[train] {out} holds the finished model of this recipe; keeping it")
                    return {"variant": v, "model": str(out)}
                write_json(started, {"fingerprint": fp})
                return train_variant(self.config, v, o, data, out)

            self.tracker.run(f"train-{variant}", fp, work)
            models[variant] = str(out)
        return models

    def evaluate(self, models: dict[str, str]) -> dict[str, Any]:
        from llm_embedder.evaluation.report import write_report
        from llm_embedder.evaluation.runner import evaluate

        cfg = self.config.eval
        retrievers = [*cfg.retrievers, f"base={self.config.encoder}"] + [
            f"{name}={path}" for name, path in models.items()
        ]
        results = {}
        for task, data in self.config.tasks.items():
            dev = self.data_file(task, "dev")
            built = self.tracker.state_dir / f"build-{task}.json"
            corpus = _built_corpus(built) or (str(self.config.resolve(data.corpus)) if data.corpus else None)
            fp = self.config.fingerprint(
                cfg,
                retrievers,
                TASKS.to_dict(),
                _file_stamp(dev),
                self.config.lm,
                [_file_stamp(Path(p) / "model.safetensors") for p in models.values()],
            )

            def work(task: str = task, dev: Path = dev, corpus: str | None = corpus) -> dict[str, Any]:
                result = evaluate(
                    task,
                    dev,
                    retrievers,
                    corpus=corpus,
                    lm=self.lm() if cfg.downstream else None,
                    limit=cfg.limit,
                    sample="random",
                    seed=self.config.seed,
                    downstream=cfg.downstream,
                    downstream_limit=cfg.downstream_limit,
                    device=self.device,
                )
                write_report(result, self.root / "eval", stem=task)
                return result

            results[task] = self.tracker.run(f"eval-{task}", fp, work)
        return results

    def run(self, stages: list[str] | None = None) -> dict[str, Any]:
        """Run the stages (default all) and write ``summary.md`` / ``summary.json`` / ``summary.png``."""
        wanted = stages or ["build", "score", "train", "eval"]
        unknown = set(wanted) - {"build", "score", "train", "eval"}
        if unknown:
            raise UserError(
                f"unknown stage(s) {', '.join(sorted(unknown))}", hint="choose from build, score, train, eval"
            )
        # two runs in one folder would train into the same checkpoints and rewrite each other's files
        with exclusive_lock(self.root.resolve(), what="pipeline run folder"):
            return self._run(wanted)

    def _run(self, wanted: list[str]) -> dict[str, Any]:
        from llm_embedder.pipeline.summary import write_summary

        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        if "build" in wanted:
            self.build()
        if "score" in wanted:
            self.score()
        models: dict[str, str] = {}
        if "train" in wanted:
            models = self.train()
        else:
            models = {
                v: str(self.root / "models" / v) for v in self.config.variants if (self.root / "models" / v).is_dir()
            }
        summary: dict[str, Any] = {}
        if "eval" in wanted:
            results = self.evaluate(models)
            summary = write_summary(self.config, results, self.tracker.seconds(), self.root)
        self.log(f"pipeline finished in {time.perf_counter() - started:.1f}s; outputs in {self.root}")
        return summary


def _has_positives(path: Path) -> bool:
    from llm_embedder.data.jsonl import iter_jsonl

    return any(obj.get("pos") for _, obj in iter_jsonl(path, allow_empty=True))


def _with_task_table(config: PipelineConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's overrides for its fingerprint, with the task table it trains with, parsed: the live table (the
    built-in one and the recipe's registrations) merged with the variant's task file. A change of either retrains
    the variant (a new built-in default included); an edited comment does not."""
    table = TASKS.copy()
    path = variant_tasks_file(config, overrides)
    # one spelling per value: `{convsearch: 2}` and `{convsearch: 2.0}` train the same model (floats_as_declared)
    numbers = {key: floats_as_declared(value, flag_type(key)) for key, value in overrides.items()}
    if path is not None:
        try:
            table.load_file(path)
        except (OSError, UserError):
            return {**numbers, "task_table": None}  # the train stage says what is wrong, in one line
    return {**numbers, "task_table": table.to_dict()}


def _file_stamp(path: Path) -> list[Any]:
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, int(stat.st_mtime)]


def _recorded_fingerprint(marker: Path) -> str | None:
    import json

    try:
        return json.loads(marker.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _built_corpus(marker: Path) -> str | None:
    import json

    try:
        return (json.loads(marker.read_text()).get("result") or {}).get("corpus")
    except (OSError, json.JSONDecodeError):
        return None


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
