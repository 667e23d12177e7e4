"""``llm-embedder train``: multi-task instruction fine-tuning from LLM feedback (paper Sec. 3).

Examples::

    llm-embedder train --data qa=qa.scored.jsonl --data chat=chat.scored.jsonl --data tool=tool.jsonl \\
        --steps 1000 --batch-size 16 --group-size 8 -o runs/embedder
    llm-embedder train --config recipe.yaml --steps 50 -o runs/quick        # flags override the recipe
    torchrun --nproc_per_node 4 -m llm_embedder.cli.main train --config recipe.yaml   # or: --nproc 4

A recipe (YAML/JSON) is a flat mapping with the same names as the flags (``batch_size``, ``grad_cache_chunk``,
``data: {qa: FILE}``...). Ablations of the paper: ``--no-instructions``, ``--mixed-batches``, ``--hard-labels``
(w/o LLM reward), ``--distillation kl`` (KL instead of stabilized distillation).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from llm_embedder.cli.common import add_tasks_file_argument
from llm_embedder.errors import UserError
from llm_embedder.training.config import IN_BATCH_DUPLICATES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="fine-tune the embedder on several tasks (reward distillation, homogeneous batches)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="training recipe (YAML/JSON, flat, same names as these flags)")
    add("--model", help="base encoder folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    add("--data", action="append", metavar="NAME[:TASK]=FILE", help="a training file; repeat for several datasets")
    add("--data-weight", action="append", metavar="NAME=W", help="scale a dataset's share of the steps (default 1)")
    add("-o", "--output", help="output folder of the trained model (checkpoints in OUT/checkpoints)")
    add("--steps", type=int, help="optimizer steps (default 1000)")
    add("--batch-size", type=int, help="queries per process per step (default 16; the paper: 100)")
    add("--group-size", type=int, help="keys per query: 1 positive + negatives (default 8)")
    add("--lr", type=float, help="AdamW learning rate (default 5e-6 as the paper; short runs want 2e-5 .. 5e-5)")
    add("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    add("--warmup", type=float, help="linear warm-up: fraction of the steps (< 1) or steps (default 0.1)")
    add("--seed", type=int, help="seed of sampling, shuffling and initialisation (default 0)")
    add("--dtype", choices=["fp32", "bf16", "fp16"], help="precision (bf16/fp16: autocast; fp16 needs a GPU)")
    add("--grad-cache-chunk", type=int, metavar="N", help="gradient caching: embed N texts at a time (large batches)")
    add("--gradient-checkpointing", action="store_true", default=None, help="recompute activations (less memory)")
    add("--query-max-length", type=int, help="query token budget (default 256)")
    add("--key-max-length", type=int, help="key token budget (default 256)")
    add(
        "--task-key-max-length",
        action="append",
        metavar="TASK=TOKENS",
        help="the key budget of one task, overriding --key-max-length (e.g. tool=256); repeat for several tasks",
    )
    add(
        "--inference-max-length",
        choices=["model", "training"],
        help="budgets the saved model encodes with: model = what the base encoder reads (default), training = above",
    )
    add("--temperature", type=float, help="student temperature tau (default 0.01)")
    add(
        "--anchor-weight",
        type=float,
        metavar="LAMBDA",
        help="hold the student near the base model's similarities on plain text (default 0: the paper's loss)",
    )
    add(
        "--anchor-task-weight",
        action="append",
        metavar="TASK=LAMBDA",
        help="the anchor weight of one task, overriding --anchor-weight (e.g. tool=0); repeat for several tasks",
    )
    add("--anchor-temperature", type=float, help="temperature of the anchor term (default 0.05)")
    add(
        "--no-pool-instructions",
        dest="pool_instructions",
        action="store_false",
        default=None,
        help="leave the instruction's tokens out of the pooled vector (mean pooling; saved with the model)",
    )
    add(
        "--no-instructions",
        dest="use_instructions",
        action="store_false",
        default=None,
        help="train without task instructions (ablation)",
    )
    add("--mixed-batches", action="store_true", default=None, help="mix datasets inside a step (ablation)")
    add(
        "--in-batch-duplicates",
        choices=IN_BATCH_DUPLICATES,
        help="keep (the reference): every key of another query is a negative; mask: not one with the same text as "
        "one of the query's own keys or labelled positives",
    )
    add(
        "--hard-labels",
        action="store_true",
        default=None,
        help="ignore teacher scores: contrastive on the labelled positive (w/o LLM reward ablation)",
    )
    add("--distillation", choices=["kl", "stabilized"], help="use this distillation loss for every distilled task")
    add(
        "--loss-override",
        action="append",
        metavar="TASK=LOSS",
        help="loss of one task: contrastive, kl_distillation (kl) or stabilized_distillation (stabilized)",
    )
    add(
        "--no-repeat",
        dest="repeat",
        action="store_false",
        default=None,
        help="reject records with fewer negatives than the group needs (default: repeat them)",
    )
    add(
        "--skip-invalid",
        action="store_true",
        default=None,
        help="leave invalid records out (counted, the first one shown) instead of stopping at the first one",
    )
    add("--num-workers", type=int, help="data-loader worker processes (default 2)")
    add("--save-steps", type=int, help="checkpoint every N steps (default 500)")
    add("--save-total-limit", type=int, help="checkpoints kept (default 2)")
    add("--logging-steps", type=int, help="log every N steps (default 10)")
    add("--resume", action="store_true", default=None, help="continue from the latest checkpoint in OUT/checkpoints")
    add("--keep-checkpoints", action="store_true", default=None, help="keep OUT/checkpoints after success")
    add("--log-batches", action="store_true", default=None, help="write OUT/batches-rank<r>.jsonl (audit)")
    add("--device", choices=["cpu", "auto"], help="cpu: ignore GPUs (default: auto)")
    add("--nproc", type=int, help="run N processes (re-launches itself with torchrun)")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def _pairs(values: list[str] | None, flag: str, convert: Any = str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for value in values or []:
        key, sep, raw = value.partition("=")
        if not sep or not key or not raw:
            raise UserError(f"bad {flag} {value!r}", hint=f"use {flag} NAME=VALUE")
        try:
            out[key.strip()] = convert(raw.strip())
        except ValueError:
            raise UserError(f"bad {flag} {value!r}: {raw!r} is not a number") from None
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe keys given on the command line (flags left out do not override the recipe)."""
    plain = (
        "model",
        "output",
        "steps",
        "batch_size",
        "group_size",
        "lr",
        "weight_decay",
        "warmup",
        "seed",
        "dtype",
        "grad_cache_chunk",
        "gradient_checkpointing",
        "query_max_length",
        "key_max_length",
        "inference_max_length",
        "temperature",
        "anchor_weight",
        "anchor_temperature",
        "pool_instructions",
        "use_instructions",
        "mixed_batches",
        "in_batch_duplicates",
        "hard_labels",
        "distillation",
        "repeat",
        "skip_invalid",
        "num_workers",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "resume",
        "keep_checkpoints",
        "log_batches",
    )
    out = {key: getattr(args, key) for key in plain if getattr(args, key) is not None}
    if args.data:
        out["data"] = list(args.data)
    if args.data_weight:
        out["data_weights"] = _pairs(args.data_weight, "--data-weight", float)
    if args.anchor_task_weight:
        out["anchor_task_weights"] = _pairs(args.anchor_task_weight, "--anchor-task-weight", float)
    if args.task_key_max_length:
        out["task_key_max_length"] = _pairs(args.task_key_max_length, "--task-key-max-length", int)
    if args.loss_override:
        out["loss_overrides"] = _pairs(args.loss_override, "--loss-override")
    if args.device == "cpu":
        out["device"] = "cpu"
    if args.tasks_file:
        out["tasks_file"] = args.tasks_file
    return out


def _relaunch(nproc: int) -> int:
    """Run this very command under torchrun with ``nproc`` processes."""
    argv = list(sys.argv[1:])
    cleaned: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        cleaned.append(item)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        "-m",
        "llm_embedder.cli.main",
        *cleaned,
    ]
    return subprocess.call(command)


def run(args: argparse.Namespace) -> int:
    from llm_embedder.training.config import TrainConfig

    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args.nproc)
    overrides = overrides_from_args(args)
    if args.config:
        config = TrainConfig.from_file(args.config, overrides)
    else:
        config = TrainConfig.from_dict(overrides, source="command line")
    config.validate()
    from llm_embedder.training.trainer import train

    train(config)
    return 0
