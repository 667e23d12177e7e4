"""Multi-task instruction fine-tuning, built on sentence-transformers' ``SentenceTransformerTrainer``.

Why this trainer rather than a loop of our own: it is Hugging Face's ``Trainer`` plus accelerate, so DDP under
``torchrun`` (gloo on CPU, NCCL on GPU), AdamW with a linear warm-up schedule, bf16/fp16 autocast, gradient
checkpointing, checkpoints holding model + optimizer + scheduler + per-process RNG, and a resume that fast-forwards
the data loader to the exact step all come for free; and it accepts our losses as they are (sentence-transformers
loss modules on ``(features, labels)``, gradient caching via its ``CachedLossMixin``).

What :class:`LLMEmbedderTrainer` adds:

* :meth:`~LLMEmbedderTrainer.get_train_dataloader`: a normal ``DataLoader`` (workers, prefetch) over
  :class:`~.dataset.GroupDataset` with the :class:`~.batch_sampler.HomogeneousBatchSampler` and the
  :class:`~.collator.GroupCollator`, prepared by accelerate. The sampler yields each step's per-process batches as
  one block, and accelerate's shard deals block member ``r`` to rank ``r``, so all ranks of a step read one dataset.
  (sentence-transformers' own ``multi_dataset_batch_sampler`` hook cannot give this: it is called with per-process
  batch samplers and its batches are dealt round-robin, so neighbouring ranks would draw different datasets.)
* the sampler's epoch is set from the global step, and its position + fingerprint are written into every checkpoint
  (``sampler_state.json``) and checked on resume: a resumed run with other data, batch size, process count or seed
  would silently follow another sequence, so it is refused.
* a guard: a non-finite loss or gradient stops the run with one line naming the step and the dataset, before the
  optimizer step, so the weights and the checkpoints stay good and no final model is written.
* the loss of every step (averaged over the processes) is kept and saved with each checkpoint, so the reported
  training loss is the mean over ALL steps of the run, a resumed one included.
* an optional batch log (which dataset and records each step of each process used) and per-dataset losses.

:func:`train` is the Python API (``train(config) -> output folder``) the CLI and the pipeline call.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from llm_embedder.errors import UserError
from llm_embedder.tasks.registry import TASKS, TaskRegistry
from llm_embedder.training.batch_sampler import BatchMixing, HomogeneousBatchSampler
from llm_embedder.training.checkpoints import (
    LOSS_HISTORY,
    SAMPLER_STATE,
    latest_checkpoint,
    read_loss_history,
    read_sampler_state,
    resume_point,
)
from llm_embedder.training.collator import GroupCollator
from llm_embedder.training.config import TrainConfig
from llm_embedder.training.dataset import GroupDataset, TrainingSet, load_training_sets
from llm_embedder.training.losses import GroupLoss, MultiTaskLoss
from llm_embedder.training.losses.anchor import AnchoredLoss
from llm_embedder.training.model_card import render_model_card
from llm_embedder.training.run_folder import (
    CHECKPOINTS,
    CONFIG_FILE,
    SUMMARY_FILE,
    check_output,
    is_finished,
    publish,
    recover,
    staging_folder,
    wait_for_recovery,
)
from llm_embedder.training.task_losses import build_task_loss, describe_loss
from llm_embedder.utils.files import write_json

logger = logging.getLogger(__name__)

#: a fixed seed for the data loader's own generator (see ``get_train_dataloader``)
_LOADER_SEED = 0


class _SamplerEpochCallback(TrainerCallback):
    """Sets the sampler's epoch from the global step at each epoch start.

    The Trainer's own ``set_epoch`` does not reach a batch sampler that accelerate wrapped twice (shard, then
    skip-first-batches on resume), and a wrong epoch would replay another epoch's order.
    """

    def __init__(self, sampler: HomogeneousBatchSampler) -> None:
        self.sampler = sampler

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sampler.set_epoch(state.global_step // self.sampler.steps_per_epoch)


class LLMEmbedderTrainer(SentenceTransformerTrainer):
    """A ``SentenceTransformerTrainer`` that reads sampled groups with homogeneous batches (see the module doc).

    Args:
        model: the SentenceTransformer being trained.
        args: ``SentenceTransformerTrainingArguments``.
        loss: a :class:`GroupLoss` (normally :class:`MultiTaskLoss`).
        group_dataset: the :class:`GroupDataset`.
        batch_sampler: the :class:`HomogeneousBatchSampler` (built for ``args.world_size`` replicas).
        collator: the :class:`GroupCollator`.
        batch_log: folder for ``batches-rank<r>.jsonl`` (None: no log).
        callbacks: extra ``TrainerCallback``\\ s.
    """

    def __init__(
        self,
        *,
        model: Any,
        args: SentenceTransformerTrainingArguments,
        loss: GroupLoss,
        group_dataset: GroupDataset,
        batch_sampler: HomogeneousBatchSampler,
        collator: GroupCollator,
        batch_log: str | Path | None = None,
        callbacks: Sequence[TrainerCallback] | None = None,
    ) -> None:
        if args.gradient_accumulation_steps != 1:
            raise UserError(
                "gradient accumulation would split a step's in-batch negatives",
                hint="use --grad-cache-chunk to fit large batches instead",
            )
        self.group_dataset = group_dataset
        self.batch_sampler = batch_sampler
        self.batch_log = Path(batch_log) if batch_log is not None else None
        #: ``[step, dataset, loss]`` of every step of the run (loss averaged over the processes)
        self.loss_history: list[list[Any]] = []
        super().__init__(
            model=model,
            args=args,
            loss=loss,
            data_collator=collator,
            callbacks=[_SamplerEpochCallback(batch_sampler), *(callbacks or [])],
        )

    @property
    def dataset_losses(self) -> dict[str, list[float]]:
        """The step losses of each dataset, in step order."""
        out: dict[str, list[float]] = defaultdict(list)
        for _, dataset, loss in self.loss_history:
            out[str(dataset)].append(float(loss))
        return out

    def get_train_dataloader(self) -> DataLoader:
        workers = self.args.dataloader_num_workers
        # The loader's own generator: without one, every new iterator draws its base seed from the GLOBAL torch
        # RNG, the one dropout uses. Persistent workers create the iterator once per run, so a resumed run (a fresh
        # iterator for the rest of the epoch, another at the next epoch) drew once more than an uninterrupted one
        # and its dropout masks shifted at the epoch boundary. The workers need no randomness of their own: group
        # sampling is seeded per item (SampleRef.seed).
        loader = DataLoader(
            self.group_dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=workers > 0 and self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            generator=torch.Generator().manual_seed(_LOADER_SEED),
        )
        # like sentence-transformers: no padding of uneven last batches during training
        self.accelerator.even_batches = False
        self._train_dataloader = self.accelerator.prepare(loader)
        return self._train_dataloader

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        sample_ids = inputs.pop("sample_ids", None)
        dataset_name = inputs.get("dataset_name")
        loss = super().training_step(model, inputs, num_items_in_batch)
        # gradient accumulation is refused, so the gradients are this step's, and the optimizer has not used them
        mean_loss, finite = self._check_step(model, loss)
        if not finite:
            raise UserError(self._non_finite_message(mean_loss, dataset_name))
        self.loss_history.append([self.state.global_step + 1, dataset_name, mean_loss])
        if self.batch_log is not None:
            self.batch_log.mkdir(parents=True, exist_ok=True)
            entry = {
                "step": self.state.global_step + 1,
                "rank": self.args.process_index,
                "dataset": dataset_name,
                "ids": sample_ids,
                "loss": float(loss),
            }
            with open(self.batch_log / f"batches-rank{self.args.process_index}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return loss

    def _check_step(self, model: Any, loss: torch.Tensor) -> tuple[float, bool]:
        """The step's loss averaged over the processes, and whether loss and gradients are finite on all of them.

        One all-reduce carries both, so every process takes the same decision (one stopping alone would hang the
        others in their next collective).
        """
        # fp16 scales the loss: an overflowing gradient is normal there, and the scaler skips that optimizer step
        scaled = getattr(self.accelerator, "scaler", None) is not None
        grads = [] if scaled else [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        loss_value = loss.detach().float().reshape(()).cpu()
        bad = (~torch.isfinite(loss_value)) | (~torch.isfinite(grad_norm.detach().float().cpu()))
        flags = torch.stack([torch.where(bad, 0.0, loss_value), bad.float()]).to(loss.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags)
            flags[0] /= torch.distributed.get_world_size()
        total, bad_count = flags.tolist()
        if bad_count > 0:
            return float(loss_value), False
        return total, True

    def _non_finite_message(self, loss: float, dataset_name: Any) -> str:
        step = self.state.global_step + 1
        what = f"the loss is {loss}" if not math.isfinite(loss) else "a gradient is not finite"
        where = f"dataset '{dataset_name}'"
        for ts in self.group_dataset.sets:
            if ts.name == dataset_name:
                where += f" (task {ts.task}, {ts.path})"
        latest = latest_checkpoint(self.args.output_dir)
        kept = f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint was saved yet"
        return (
            f"training stopped at step {step}: {what} on {where}; no model was written and {kept} "
            "(check that dataset's records and scores, or lower --lr)"
        )

    def sampler_state(self) -> dict[str, Any]:
        """The sampler's position as the training loop sees it (the data loader prefetches ahead of it)."""
        steps = self.batch_sampler.steps_per_epoch
        state = self.batch_sampler.state_dict(steps_consumed=self.state.global_step % steps)
        state["epoch"] = self.state.global_step // steps
        state["global_step"] = self.state.global_step
        return state

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        # Called on process 0 for every checkpoint, before the optimizer/RNG/trainer-state files.
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        write_json(Path(output_dir) / SAMPLER_STATE, self.sampler_state())
        write_json(Path(output_dir) / LOSS_HISTORY, self.loss_history)


# ---------------------------------------------------------------------------------------------------- the API
def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    if _is_main_process():
        print(f"[train] {message}", flush=True)


def build_training_arguments(config: TrainConfig, checkpoints_dir: Path) -> SentenceTransformerTrainingArguments:
    """Hugging Face training arguments of a recipe."""
    t, d = config.training, config.data
    use_cpu = t.device == "cpu" or not torch.cuda.is_available()
    if t.dtype == "fp16" and use_cpu:
        raise UserError("fp16 training needs a CUDA GPU", hint="use --dtype bf16 or fp32 on the CPU")
    warmup: float | int = t.warmup if t.warmup < 1 else int(t.warmup)
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints_dir),
        max_steps=t.steps,
        per_device_train_batch_size=t.batch_size,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=t.dtype == "bf16",
        fp16=t.dtype == "fp16",
        use_cpu=use_cpu,
        activation_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        report_to="none",
        dataloader_num_workers=d.num_workers,
        dataloader_persistent_workers=d.num_workers > 0,
        dataloader_drop_last=True,
        dataloader_pin_memory=not use_cpu,
        disable_tqdm=not _is_main_process(),
    )


def _instruction_fn(embedder: Any) -> Callable[[str, str], str]:
    def instruction(task: str, side: str) -> str:
        return embedder.instruction(task, side)

    return instruction


def _loss_summary(values: list[float]) -> dict[str, Any]:
    tenth = max(1, len(values) // 10)
    return {
        "first": sum(values[:tenth]) / tenth,
        "last": sum(values[-tenth:]) / tenth,
        "steps": len(values),
    }


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    *,
    registry: TaskRegistry | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> str:
    """Train LLM-Embedder as ``config`` says; returns the folder of the trained model.

    ``config``: a :class:`TrainConfig`, a flat mapping of the ``llm-embedder train`` flags, or a recipe file. Run it
    under ``torchrun --nproc_per_node N`` for N processes. The output folder loads with ``LLMEmbedder(folder)`` and
    ``SentenceTransformer(folder)``, carries the task instructions and a model card; checkpoints go to
    ``OUT/checkpoints`` (removed at the end unless ``keep_checkpoints``), so a killed run continues with
    ``resume=True`` (``--resume``).
    """
    config = TrainConfig.coerce(config)
    registry = registry if registry is not None else TASKS
    if config.data.tasks_file:
        # on a copy: a recipe's task definitions must not change the tasks of later calls in the same process
        registry = registry.copy()
        registry.load_file(config.data.tasks_file)
    config.validate()
    out = Path(config.training.output)
    checkpoints_dir = out / CHECKPOINTS
    if _is_main_process():
        recover(out)
    else:
        wait_for_recovery(out)
    if is_finished(out) and config.training.resume:
        _say(f"{out} already holds the finished model of this run; nothing to resume")
        return str(out)
    if (out / "llm_embedder.json").is_file():
        raise UserError(
            f"{out} already holds a trained model",
            hint="pass --resume to accept a finished run as done, choose another output folder, or delete it",
        )
    check_output(out)
    resume_from = resume_point(checkpoints_dir, resume=config.training.resume)
    if config.training.resume and resume_from is None:
        _say(f"no checkpoint in {checkpoints_dir}: starting from the beginning")

    # 1. data: every problem is reported before the model is loaded
    sets = load_training_sets(config, registry)
    args = build_training_arguments(config, checkpoints_dir)
    world_size = args.world_size
    sampler = HomogeneousBatchSampler(
        {ts.name: len(ts) for ts in sets},
        config.training.batch_size,
        num_replicas=world_size,
        seed=config.training.seed,
        weights={ts.name: ts.weight for ts in sets},
        mode=BatchMixing.MIXED if config.data.mixed_batches else BatchMixing.HOMOGENEOUS,
    )
    if resume_from is not None:
        saved = read_sampler_state(resume_from)
        if saved is not None:
            sampler.check_fingerprint(saved)

    # 2. model and loss
    from llm_embedder.model.embedder import LLMEmbedder

    embedder = LLMEmbedder(
        config.model.model,
        device="cpu",
        query_max_length=config.model.query_max_length,
        key_max_length=config.model.key_max_length,
        use_instructions=config.model.use_instructions,
        pooling=config.model.pooling,
        tasks=registry,
    )
    if config.model.pool_instructions is not None:
        _set_instruction_pooling(embedder.model, include=config.model.pool_instructions)
    #: what the base encoder can read (its sentence-transformers max_seq_length, before training budgets apply)
    base_max_length = min(int(embedder.model.max_seq_length or 512), embedder.position_limit or 10**9)
    task_losses: dict[str, GroupLoss] = {}
    for ts in sets:
        if ts.task not in task_losses:
            override = config.data.loss_overrides.get(ts.task)
            task_losses[ts.task] = build_task_loss(
                ts.spec, temperature=config.model.temperature, override=None if isinstance(override, str) else override
            )
    loss = _build_loss(config, embedder, task_losses)
    task_key_max_length = _task_key_budgets(config, embedder, task_losses)
    collator = GroupCollator(
        embedder.model.preprocess,
        instruction=_instruction_fn(embedder),
        task_names=loss.task_names,
        query_max_length=config.model.query_max_length,
        key_max_length=config.model.key_max_length,
        task_key_max_length=task_key_max_length,
        task_query_max_length={name: embedder.max_length("query", name) for name in loss.task_names},
        fit_texts=embedder.fit_texts,
        tail_tasks=[name for name in loss.task_names if registry.get(name).query_truncation == "left"],
        duplicates=config.data.in_batch_duplicates == "mask",
        anchor=isinstance(loss, AnchoredLoss),
    )
    steps_share = sampler.steps_per_dataset()
    _say(
        f"{len(sets)} dataset(s), {sum(len(ts) for ts in sets)} records; {world_size} process(es) x "
        f"{config.training.batch_size} queries x group {config.data.group_size}; {sampler.steps_per_epoch} steps/epoch "
        f"({'mixed' if config.data.mixed_batches else 'homogeneous'} batches); {config.training.steps} steps"
    )
    for ts in sets:
        dropped = f", {ts.dropped} dropped by the score margin" if ts.dropped else ""
        _say(
            f"  {ts.name}: task {ts.task}, {len(ts)} records{dropped}, {steps_share.get(ts.name, '-')} steps/epoch, "
            f"loss = {describe_loss(task_losses[ts.task])}"
        )
    for ts in sets:
        if ts.skipped:
            _say(f"  {ts.name}: skipped {ts.skipped} invalid record(s) of {ts.path} (first: {ts.first_skip})")
    if resume_from is not None:
        _say(f"resuming from {resume_from}")

    # 3. train
    if _is_main_process():
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        write_json(checkpoints_dir / CONFIG_FILE, config.to_json())
    trainer = LLMEmbedderTrainer(
        model=embedder.model,
        args=args,
        loss=loss,
        group_dataset=GroupDataset(sets),
        batch_sampler=sampler,
        collator=collator,
        batch_log=out if config.training.log_batches else None,
        callbacks=callbacks,
    )
    if resume_from is not None:
        trainer.loss_history = read_loss_history(resume_from)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    runtime = time.perf_counter() - started

    # 4. the trained model, its card and summary (process 0), written aside and published in one rename
    if trainer.is_world_process_zero():
        summary = _summary(config, sets, sampler, task_losses, trainer, runtime, world_size, embedder)
        embedder.model.eval()
        if config.model.inference_max_length == "model":
            embedder.query_max_length = embedder.key_max_length = base_max_length
        else:  # "training": the longest key budget any task trained with
            embedder.key_max_length = max([config.model.key_max_length, *task_key_max_length.values()])
        staging = staging_folder(out)
        embedder.save(staging, model_card=render_model_card(summary))
        write_json(staging / CONFIG_FILE, config.to_json())
        write_json(staging / SUMMARY_FILE, summary)  # last: the staging folder is complete
        publish(out, keep_checkpoints=config.training.keep_checkpoints)
        _say(f"saved {out} (training loss {summary['metrics']['training_loss']:.4f})")
    trainer.accelerator.wait_for_everyone()
    return str(out)


def _set_instruction_pooling(model: Any, *, include: bool) -> None:
    """Whether the pooling counts the instruction's tokens (sentence-transformers' ``include_prompt``).

    The collator passes each homogeneous batch's instruction as the prompt, so sentence-transformers knows its
    length; the saved pooling config carries the choice to every later ``encode`` (torch and ONNX alike).
    """
    modules = [module for module in model if hasattr(module, "include_prompt")]
    if not modules:
        raise UserError(
            "pool_instructions is set, but the model has no pooling module that can leave the instruction out",
            hint="remove pool_instructions from the recipe",
        )
    for module in modules:
        module.include_prompt = include


def _check_run_tasks(field: str, per_task: Mapping[str, Any], task_losses: Mapping[str, GroupLoss]) -> None:
    """A per-task recipe mapping may only name tasks the run trains: a typo would otherwise be ignored silently."""
    unknown = sorted(set(per_task) - set(task_losses))
    if unknown:
        raise UserError(
            f"{field} names task(s) {', '.join(unknown)} that no training dataset has",
            hint=f"the run's tasks: {', '.join(task_losses)}",
        )


def _task_key_budgets(config: TrainConfig, embedder: Any, task_losses: Mapping[str, GroupLoss]) -> dict[str, int]:
    """``task_key_max_length`` checked against the run's tasks and the encoder's position limit."""
    budgets = dict(config.model.task_key_max_length)
    _check_run_tasks("task_key_max_length", budgets, task_losses)
    for task, value in budgets.items():
        try:
            embedder.check_length(value)
        except UserError as err:
            raise UserError(f"task_key_max_length.{task}: {err.message}", hint=err.hint) from None
    return budgets


def _build_loss(config: TrainConfig, embedder: Any, task_losses: Mapping[str, GroupLoss]) -> GroupLoss:
    """Every task's loss in one module; with an anchor weight > 0 (``anchor_weight`` or one of
    ``anchor_task_weights``) wrapped in the anchor term to a frozen copy of the base model (copied before the first
    step, so it is the base even when a run resumes)."""
    chunk = config.training.grad_cache_chunk
    task_weights = config.model.anchor_task_weights
    _check_run_tasks("anchor_task_weights", task_weights, task_losses)
    weights = [task_weights.get(task, config.model.anchor_weight) for task in task_losses]
    if max(weights, default=0.0) <= 0:
        return MultiTaskLoss(embedder.model, losses=task_losses, mini_batch_size=chunk)
    anchor = copy.deepcopy(embedder.model)
    return AnchoredLoss(
        embedder.model,
        inner=MultiTaskLoss(None, losses=task_losses),
        anchor=anchor,
        weight=config.model.anchor_weight,
        task_weights=task_weights,
        anchor_temperature=config.model.anchor_temperature,
        mini_batch_size=chunk,
    )


def _summary(
    config: TrainConfig,
    sets: list[TrainingSet],
    sampler: HomogeneousBatchSampler,
    task_losses: Mapping[str, GroupLoss],
    trainer: LLMEmbedderTrainer,
    runtime: float,
    world_size: int,
    embedder: Any,
) -> dict[str, Any]:
    history = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    step_losses = [float(loss) for _, _, loss in trainer.loss_history]
    steps_share = sampler.steps_per_dataset()
    steps_run = trainer.state.global_step - getattr(trainer, "_initial_global_step", 0)
    return {
        "base_model": config.model.model or "sentence-transformers/all-MiniLM-L6-v2 (bundled)",
        "world_size": world_size,
        "global_batch_size": sampler.global_batch_size,
        "config": config.to_json(),
        "datasets": [
            {
                "name": ts.name,
                "task": ts.task,
                "path": ts.path,
                "records": len(ts),
                "dropped": ts.dropped,
                "skipped": ts.skipped,
                "weight": ts.weight,
                "steps_per_epoch": steps_share.get(ts.name, "-") if not config.data.mixed_batches else "mixed",
                "loss": describe_loss(task_losses[ts.task]),
            }
            for ts in sets
        ],
        "metrics": {
            "steps": trainer.state.global_step,
            # the mean over every step of the run (Hugging Face's own counts only the steps since a resume)
            "training_loss": sum(step_losses) / len(step_losses) if step_losses else None,
            "last_loss": history[-1] if history else None,
            "runtime_s": runtime,
            "queries_per_second": steps_run * sampler.global_batch_size / runtime if runtime > 0 else None,
        },
        "dataset_losses": {name: _loss_summary(values) for name, values in trainer.dataset_losses.items()},
        "use_instructions": embedder.use_instructions,
    }
