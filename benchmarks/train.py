"""Training speed and memory of ``llm-embedder train`` against sentence-transformers' own trainer.

Ours: ``LLMEmbedderTrainer`` on the qa task's loss from the task table - stabilized distillation of (fabricated,
seeded) teacher scores over all in-batch keys, plus ``contrastive_weight`` x InfoNCE (0 since issue 14, the
reference's qa config; it was 0.2 before) - with gradient caching. Baseline: ``SentenceTransformerTrainer``
with ``CachedMultipleNegativesRankingLoss`` (InfoNCE only, GradCache), what a user would write without this package.
Same bundled model (all-MiniLM-L6-v2), same texts (qa train queries with their first positive and G-1 negatives,
the qa instructions as prompts), same batch, group size, max length and GradCache mini-batch, same optimiser, no
data-loader workers (the CPU has 2 cores), one thread.

Each run is a fresh subprocess (clean memory accounting); runs alternate ours / baseline so a shared machine's drift
hits both. Per run: median wall seconds per step after a warm-up step, CPU seconds per step (process time, all
threads: less sensitive to other jobs), and peak RSS during training above the RSS when training starts (model and
data loaded; sampled every 5 ms).
The largest batch that fits in 8 GB is extrapolated: GradCache keeps activations per mini-batch, so what grows with
the batch B is linear (inputs, embeddings, their cached gradients: measured from the peaks at two batch sizes) plus
the B x B*G score matrix of the loss (quadratic: measured on random embeddings at two sizes).

    .venv/bin/python benchmarks/train.py                          # batches 16 and 32, group 4, length 128, 6 steps
    .venv/bin/python benchmarks/train.py --batch-sizes 8 --steps 4 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

DATA = Path(os.environ.get("LLM_EMBEDDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ROOT = Path(__file__).resolve().parents[1]


class PeakRSS:
    """Peak resident memory of this process while active, sampled in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def reset(self) -> None:
        """Measure from now on (called when training starts: model and data are loaded by then)."""
        self.start = self.process.memory_info().rss
        self.peak = self.start

    def __enter__(self) -> PeakRSS:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build_rows(n: int, group: int, seed: int = 0) -> list[dict]:
    """qa train records cut to one positive + group-1 negatives, with seeded fake teacher scores."""
    import random

    from llm_embedder.data.records import load_records

    rng = random.Random(seed)
    rows = []
    for record in load_records(DATA / "tasks" / "qa" / "train.jsonl", task="qa"):
        if not record.pos or len(record.neg) < group - 1:
            continue
        rows.append(
            {
                "query": record.query,
                "pos": record.pos[:1],
                "neg": record.neg[: group - 1],
                "teacher_scores": [-rng.random() for _ in range(group)],
            }
        )
        if len(rows) == n:
            break
    return rows


def step_timer(memory: PeakRSS) -> object:
    """A TrainerCallback recording wall and CPU seconds of every step; memory is measured from the first step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, args: object, state: object, control: object, **kwargs: object) -> None:
            memory.reset()

        def on_step_begin(self, args: object, state: object, control: object, **kwargs: object) -> None:
            self._w, self._c = time.perf_counter(), time.process_time()

        def on_step_end(self, args: object, state: object, control: object, **kwargs: object) -> None:
            self.wall.append(time.perf_counter() - self._w)
            self.cpu.append(time.process_time() - self._c)

    return StepTimer()


def run_ours(args: argparse.Namespace, workdir: Path) -> dict:
    from llm_embedder.training.trainer import train

    data = workdir / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in build_rows(args.batch * (args.steps + 1), args.group)))
    memory = PeakRSS()
    timer = step_timer(memory)
    config = {
        "data": {"qa": str(data)},
        "output": str(workdir / "ours"),
        "steps": args.steps,
        "batch_size": args.batch,
        "group_size": args.group,
        "query_max_length": args.max_length,
        "key_max_length": args.max_length,
        "grad_cache_chunk": args.chunk,
        "lr": 2e-5,
        "warmup": 0,
        "num_workers": 0,
        "save_steps": 10_000,
        "logging_steps": 10_000,
        "device": "cpu",
    }
    with memory:
        train(config, callbacks=[timer])
    return {"wall": timer.wall, "cpu": timer.cpu, "rss_start": memory.start, "rss_peak": memory.peak}


def run_baseline(args: argparse.Namespace, workdir: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from llm_embedder import get_task
    from llm_embedder.model.loading import default_encoder_path

    rows = build_rows(args.batch * (args.steps + 1), args.group)
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows]}
    for i in range(args.group - 1):
        columns[f"negative_{i + 1}"] = [r["neg"][i] for r in rows]
    spec = get_task("qa")
    prompts = {name: spec.key_instruction for name in columns} | {"anchor": spec.query_instruction}
    model = SentenceTransformer(default_encoder_path(), device="cpu")
    model.max_seq_length = args.max_length
    loss = CachedMultipleNegativesRankingLoss(model, scale=100.0, mini_batch_size=args.chunk)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "baseline"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=2e-5,
        prompts=prompts,
        save_strategy="no",
        logging_steps=10_000,
        report_to="none",
        use_cpu=True,
        dataloader_drop_last=True,
        seed=0,
    )
    memory = PeakRSS()
    timer = step_timer(memory)
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=Dataset.from_dict(columns), loss=loss, callbacks=[timer]
    )
    with memory:
        trainer.train()
    return {"wall": timer.wall, "cpu": timer.cpu, "rss_start": memory.start, "rss_peak": memory.peak}


def loss_bytes_per_score_element(group: int, dim: int = 384) -> float:
    """Peak memory of the qa loss (the task table's: stabilized distillation) and its backward, per score element.

    Measured on random embeddings at two batch sizes, so the (quadratic) score-matrix term can be extrapolated.
    """
    import torch

    from llm_embedder.tasks.registry import get_task
    from llm_embedder.training.task_losses import build_task_loss

    loss = build_task_loss(get_task("qa").training)
    peaks = {}
    for batch in (256, 1024):
        queries = torch.randn(batch, dim, requires_grad=True)
        keys = torch.randn(batch * group, dim, requires_grad=True)
        teacher = torch.randn(batch, group)
        with PeakRSS(interval=0.001) as memory:
            loss.calculate_loss([[queries], [keys]], teacher).backward()
        peaks[batch] = memory.peak - memory.start
    return (peaks[1024] - peaks[256]) / ((1024**2 - 256**2) * group)


def largest_batch(budget_mb: float, per_query_mb: float, score_mb_per_query2: float) -> int:
    """Largest B with per_query * B + score * B^2 <= budget."""
    a, b = score_mb_per_query2, per_query_mb
    if budget_mb <= 0:
        return 0
    return int((-b + (b * b + 4 * a * budget_mb) ** 0.5) / (2 * a)) if a > 0 else int(budget_mb / max(b, 1e-9))


def worker(args: argparse.Namespace) -> None:
    import tempfile

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_ours if args.worker == "ours" else run_baseline)(args, Path(tmp))
    print("RESULT " + json.dumps(result))


def launch(kind: str, batch: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--batch",
        str(batch),
        "--group",
        str(args.group),
        "--max-length",
        str(args.max_length),
        "--chunk",
        str(args.chunk),
        "--steps",
        str(args.steps),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    steps = slice(1, None)  # the first step warms up (allocations, lazy inits)
    return {
        "batch": batch,
        "wall_s_per_step": statistics.median(result["wall"][steps]),
        "cpu_s_per_step": statistics.median(result["cpu"][steps]),
        "peak_mb": (result["rss_peak"] - result["rss_start"]) / 2**20,
        "rss_start_mb": result["rss_start"] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="16,32", help="comma-separated queries per step")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16, help="GradCache mini-batch (texts) for both trainers")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per trainer and batch size")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    results: dict[str, list[dict]] = {"ours": [], "baseline": []}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for _ in range(args.repeats):
            for kind in ("ours", "baseline"):
                results[kind].append(launch(kind, batch, args))
                r = results[kind][-1]
                print(
                    f"  {kind:8s} batch {batch:4d}: {r['wall_s_per_step']:.2f} s/step wall, "
                    f"{r['cpu_s_per_step']:.2f} s/step cpu, peak +{r['peak_mb']:.0f} MB",
                    flush=True,
                )

    print(f"\ngroup {args.group}, max length {args.max_length}, GradCache chunk {args.chunk}, {args.steps} steps, CPU")
    print(
        f"{'batch':>5} | {'ours q/s':>9} | {'ST q/s':>9} | {'ratio':>6} | {'ours q/cpu-s':>12} | {'ST q/cpu-s':>10} | "
        f"{'ratio':>6} | {'ours MB':>8} | {'ST MB':>8}"
    )
    summary = []
    for batch in sorted({r["batch"] for r in results["ours"]}):
        ours = [r for r in results["ours"] if r["batch"] == batch]
        base = [r for r in results["baseline"] if r["batch"] == batch]
        o_qps = batch / statistics.median(r["wall_s_per_step"] for r in ours)
        b_qps = batch / statistics.median(r["wall_s_per_step"] for r in base)
        o_cpu = batch / statistics.median(r["cpu_s_per_step"] for r in ours)
        b_cpu = batch / statistics.median(r["cpu_s_per_step"] for r in base)
        o_mb = max(r["peak_mb"] for r in ours)
        b_mb = max(r["peak_mb"] for r in base)
        summary.append(
            {
                "batch": batch,
                "ours_qps": o_qps,
                "baseline_qps": b_qps,
                "ours_q_per_cpu_s": o_cpu,
                "baseline_q_per_cpu_s": b_cpu,
                "ours_peak_mb": o_mb,
                "baseline_peak_mb": b_mb,
            }
        )
        print(
            f"{batch:5d} | {o_qps:9.2f} | {b_qps:9.2f} | {o_qps / b_qps:6.2f} | {o_cpu:12.2f} | {b_cpu:10.2f} | "
            f"{o_cpu / b_cpu:6.2f} | {o_mb:8.0f} | {b_mb:8.0f}"
        )
    if len(summary) >= 2:
        low, high = summary[0], summary[-1]
        per_query = max(0.0, (high["ours_peak_mb"] - low["ours_peak_mb"]) / (high["batch"] - low["batch"]))
        fixed = low["ours_peak_mb"] - per_query * low["batch"]
        start = statistics.median(r["rss_start_mb"] for r in results["ours"])
        score_bytes = loss_bytes_per_score_element(args.group)
        estimate = largest_batch(8 * 1024 - start - fixed, per_query, score_bytes * args.group / 2**20)
        print(
            f"\nours: {per_query:.2f} MB per query (linear part, measured), {score_bytes:.0f} bytes per element of the "
            f"B x B*G score matrix (loss + backward, measured), {fixed:.0f} MB fixed, {start:.0f} MB before training\n"
            f"-> largest batch in 8 GB ~ {estimate} queries per process (group {args.group}, length {args.max_length}, "
            f"GradCache chunk {args.chunk})"
        )
        summary.append(
            {
                "mb_per_query": per_query,
                "score_bytes_per_element": score_bytes,
                "fixed_mb": fixed,
                "rss_before_mb": start,
                "max_batch_8gb": estimate,
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
