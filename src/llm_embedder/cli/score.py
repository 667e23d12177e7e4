"""``llm-embedder score``: fill ``teacher_scores`` of records with an LLM's feedback (resumable).

The reward of a candidate is the mean (or sum) log-probability of the record's answer given the task's reward
prompt with the candidate in it (see ``llm_embedder.reward``). The run survives ``kill -9``: rerun the same
command and it continues; the result is byte-identical to an uninterrupted run. Several processes or GPUs:
``torchrun --nproc_per_node N -m llm_embedder.cli.main score ...`` (each rank scores a share, rank 0 merges).

Example: llm-embedder score --task qa dev.jsonl -o dev.scored.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llm_embedder.cli.common import add_tasks_file_argument, load_tasks_file
from llm_embedder.errors import UserError
from llm_embedder.lm.loading import BUNDLED_LMS, DEFAULT_LM, resolve_lm
from llm_embedder.lm.precision import DEFAULT_SCORING_DTYPE, LM_DTYPES
from llm_embedder.tasks.registry import TASKS
from llm_embedder.tasks.spec import DEFAULT_MAX_KEY_TOKENS

if TYPE_CHECKING:
    from llm_embedder.reward.distributed import DistributedContext
    from llm_embedder.reward.resumable import ScoreFileResult

# The reward modules import torch (seconds); they are imported in run() so `llm-embedder score --help` is instant.


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "score",
        help="fill teacher_scores of records from LLM feedback (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN.jsonl", help="records (pos/neg or history, answers)")
    parser.add_argument("-o", "--output", required=True, help="scored records (JSON lines)")
    parser.add_argument("--task", default=None, help="task of all records (default: each record's 'task' field)")
    parser.add_argument(
        "--lm",
        default=DEFAULT_LM,
        help=f"LLM: {', '.join(BUNDLED_LMS)} (bundled), a folder, a .gguf file or a hub id (default: {DEFAULT_LM})",
    )
    parser.add_argument(
        "--dtype",
        default=DEFAULT_SCORING_DTYPE,
        choices=LM_DTYPES,
        help="LM precision (default auto: bf16-mixed where bf16 is native, else fp32; fp32 = exact reference)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--reduction", default="mean", choices=["mean", "sum"], help="of the answer's token log-probs")
    parser.add_argument(
        "--max-key-tokens",
        type=int,
        default=DEFAULT_MAX_KEY_TOKENS,
        help="truncate each candidate to this many LM tokens (default 512, as the reference)",
    )
    parser.add_argument("--max-length", type=int, default=None, help="longest prompt in tokens (default: the LM's)")
    parser.add_argument(
        "--template",
        default=None,
        help="reward template overriding the task's, with {key}, {query} and {answer} ('\\n' = newline)",
    )
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="padded tokens per forward pass (default: 1024 on CPU, 8192 on GPU)",
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="sequences per forward pass")
    parser.add_argument("--chunk-size", type=int, default=64, help="records per resumable step (keep it on restart)")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="skip invalid records (counted) instead of stopping"
    )
    parser.add_argument("--restart", action="store_true", help="discard a previous partial run of this output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tasks_file_argument(parser)
    parser.set_defaults(func=run)


def _unescape(template: str) -> str:
    """Shell users type ``\\n``; a literal backslash stays available as ``\\\\``."""
    out = []
    i = 0
    while i < len(template):
        if template[i] == "\\" and i + 1 < len(template) and template[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[template[i + 1]])
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def _lm_identity(name: str) -> dict[str, str]:
    """What identifies the LM in the resume fingerprint: its folder and its config's bytes."""
    folder = resolve_lm(name)
    config = Path(folder) / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else ""
    return {"lm": folder, "lm_config": digest}


def run(args: argparse.Namespace) -> int:
    from llm_embedder.prompts import split_template
    from llm_embedder.reward.distributed import DistributedContext
    from llm_embedder.reward.resumable import precheck_file, score_lock

    load_tasks_file(args)
    template = _unescape(args.template) if args.template is not None else None
    if template is not None:
        split_template(template)
    if args.task is not None:
        spec = TASKS.get(args.task)
        if spec.reward.kind == "none":
            raise UserError(
                f"task {spec.name!r} has no LLM reward (reward.kind: none - the paper trains it on hard labels only)",
                hint="train it with its pos/neg labels, or give the task a reward template in a --tasks file",
            )
    for name in ("max_key_tokens", "token_budget", "max_batch_size", "chunk_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    input_path = Path(args.input)
    if not args.skip_invalid:
        precheck_file(input_path, task=args.task)  # fail before the LLM is loaded, not at hour five

    dist = DistributedContext.from_env()
    dist.init()
    try:
        with score_lock(args.output, dist):
            result = _score(args, input_path, template, dist)
    finally:
        dist.close()
    if dist.is_main:
        resumed = f" (resumed after {result.resumed_records})" if result.resumed_records else ""
        print(
            f"scored {result.written} records, {result.candidates} candidates{resumed} -> {result.output}",
            file=sys.stderr,
        )
        if result.skipped:
            print(f"skipped {result.skipped} invalid records (first: {result.first_skip})", file=sys.stderr)
    return 0


def _score(
    args: argparse.Namespace, input_path: Path, template: str | None, dist: DistributedContext
) -> ScoreFileResult:
    """Load the LLM and score the file (the caller holds the output's lock)."""
    from llm_embedder.lm.loading import load_causal_lm
    from llm_embedder.lm.precision import resolve_dtype
    from llm_embedder.reward.resumable import score_file
    from llm_embedder.reward.scorer import RewardScorer

    identity = _lm_identity(args.lm)
    device = dist.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer = load_causal_lm(args.lm, dtype=dtype, device=device)
    scorer = RewardScorer(
        model,
        tokenizer,
        task=args.task,
        template=template,
        reduction=args.reduction,
        max_key_tokens=args.max_key_tokens,
        max_length=args.max_length,
        token_budget=args.token_budget,
        max_batch_size=args.max_batch_size,
    )
    result = score_file(
        input_path,
        args.output,
        scorer,
        chunk_size=args.chunk_size,
        skip_invalid=args.skip_invalid,
        options={**identity, "dtype": dtype},  # the resolved precision: "auto" differs between machines
        dist=dist,
        restart=args.restart,
        show_progress=not args.no_progress,
        lock=False,
    )
    return result
