"""Two real processes (gloo on CPU): homogeneous steps across ranks with the real trainer, and the cross-process
losses equal to one process holding the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from net_helpers import free_port
from safetensors.torch import load_file
from train_helpers import build_tiny_model, make_records, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _three_tasks(folder: Path, *, qa: int, chat: int, tool: int) -> dict[str, str]:
    """Training files of three tasks with the three record shapes: scored, chat history, labelled only."""
    return {
        "qa": write_jsonl(folder / "qa.jsonl", make_records(qa, seed=1)),
        "chat": write_jsonl(folder / "chat.jsonl", make_records(chat, seed=2, history=True)),
        "tool": write_jsonl(folder / "tool.jsonl", make_records(tool, seed=3, scored=False)),
    }


def test_two_process_training_takes_each_step_from_one_dataset(tmp_path):
    model = build_tiny_model(tmp_path / "tiny")
    files = _three_tasks(tmp_path, qa=24, chat=16, tool=16)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "llm_embedder.cli.main",
        "train",
        "--nproc",
        "2",
        "--model",
        model,
        *[arg for name, path in files.items() for arg in ("--data", f"{name}={path}")],
        "--steps",
        "8",
        "--batch-size",
        "2",
        "--group-size",
        "3",
        "--grad-cache-chunk",
        "3",
        "--lr",
        "1e-3",
        "--query-max-length",
        "48",
        "--key-max-length",
        "48",
        "--num-workers",
        "1",
        "--save-steps",
        "4",
        "--log-batches",
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "MASTER_PORT": str(free_port())}
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) x 2 queries" in result.stdout

    steps: dict[int, dict[int, dict]] = defaultdict(dict)
    for rank in (0, 1):
        for line in (out / f"batches-rank{rank}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            steps[entry["step"]][rank] = entry
    assert sorted(steps) == list(range(1, 9))
    used = set()
    for step, ranks in steps.items():
        assert set(ranks) == {0, 1}, f"step {step} missing a rank"
        assert ranks[0]["dataset"] == ranks[1]["dataset"], f"step {step}: ranks drew different datasets"
        ids = ranks[0]["ids"] + ranks[1]["ids"]
        assert {i.split(":")[0] for i in ids} == {ranks[0]["dataset"]} and len(set(ids)) == 4
        used.add(ranks[0]["dataset"])
    assert len(used) >= 2  # the steps really came from several datasets
    assert (out / "model.safetensors").is_file() and (out / "llm_embedder.json").is_file()


_STOPPING_RUN = """
import json, sys
from transformers import TrainerCallback
from llm_embedder.training import train


class StopAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            raise SystemExit(3)  # every rank, at the same step: a killed job


train(json.loads(open(sys.argv[1]).read()), callbacks=[StopAfter()])
"""


def test_two_processes_resumed_inside_a_later_epoch_continue_its_order(tmp_path):
    """Resumed inside epoch 1 under two processes, accelerate wraps the sampler twice (shard, then skip the finished
    batches) and the Trainer's own ``set_epoch`` no longer reaches it: without the trainer's epoch callback the rest
    of the run replayed epoch 0's order (measured: other ids from step 7 on, other weights). The resumed run must
    take the uninterrupted run's batches and end with its weights, bit for bit."""
    model = build_tiny_model(tmp_path / "tiny")
    files = _three_tasks(tmp_path, qa=8, chat=4, tool=4)
    script = tmp_path / "run.py"
    script.write_text(_STOPPING_RUN)

    def run(out: Path, stop_after: int, **extra) -> subprocess.CompletedProcess:
        # 16 records, 2 processes x 2 queries: 4 steps an epoch; checkpoint 6 is inside epoch 1
        config = {
            "model": model,
            "data": [{"name": name, "path": str(path)} for name, path in files.items()],
            "steps": 10,
            "batch_size": 2,
            "group_size": 3,
            "lr": 1e-3,
            "query_max_length": 48,
            "key_max_length": 48,
            "save_steps": 2,
            "log_batches": True,
            "output": str(out),
            **extra,
        }
        config_file = tmp_path / f"{out.name}-{stop_after}.json"
        config_file.write_text(json.dumps(config))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command = [*launch, "--master_port", str(free_port()), str(script), str(config_file), str(stop_after)]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    reference, out = tmp_path / "reference", tmp_path / "resumed"
    assert run(reference, 0).returncode == 0
    assert run(out, 7).returncode != 0
    assert (out / "checkpoints" / "checkpoint-6").is_dir() and not (out / "model.safetensors").exists()
    result = run(out, 0, resume=True)
    assert result.returncode == 0, result.stderr[-3000:]

    for rank in (0, 1):
        expected = {
            json.loads(line)["step"]: json.loads(line)["ids"]
            for line in (reference / f"batches-rank{rank}.jsonl").open()
        }
        logged = [json.loads(line) for line in (out / f"batches-rank{rank}.jsonl").open()]
        assert [entry["step"] for entry in logged] == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10]  # step 7 was never saved
        assert [entry["step"] for entry in logged if entry["ids"] != expected[entry["step"]]] == []
    expected_weights = load_file(reference / "model.safetensors")
    resumed_weights = load_file(out / "model.safetensors")
    assert [name for name in expected_weights if not torch.equal(expected_weights[name], resumed_weights[name])] == []


# ------------------------------------------------------------------------------------ losses across processes
def _distributed_losses(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from llm_embedder.training.losses import ContrastiveLoss, KLDistillationLoss, StabilizedDistillationLoss

        n, group, dim = 6, 3, 8
        gen = torch.Generator().manual_seed(0)
        queries = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        keys = torch.randn(n * group, dim, generator=gen, dtype=torch.float64)
        teacher = torch.randn(n, group, generator=gen, dtype=torch.float64)
        local = slice(rank * n // world, (rank + 1) * n // world)
        local_keys = slice(rank * n * group // world, (rank + 1) * n * group // world)
        out = {}
        for name, loss in (
            ("contrastive", ContrastiveLoss(temperature=0.05)),
            ("kl", KLDistillationLoss(temperature=0.05)),
            ("stabilized", StabilizedDistillationLoss(temperature=0.05)),
        ):
            q = queries[local].clone().requires_grad_()
            k = keys[local_keys].clone().requires_grad_()
            value = loss.calculate_loss([[q], [k]], teacher[local])
            value.backward()
            out[name] = (float(value.detach()), q.grad.clone(), k.grad.clone())
        # in-batch duplicates: the key ids are gathered from every process like the keys
        key_ids, own_ids = _duplicate_ids(n, group)
        for name, loss in (
            ("contrastive_dedup", ContrastiveLoss(temperature=0.05)),
            ("stabilized_dedup", StabilizedDistillationLoss(temperature=0.05)),
        ):
            q = queries[local].clone().requires_grad_()
            k = keys[local_keys].clone().requires_grad_()
            labels = {"teacher_scores": teacher[local], "key_ids": key_ids[local_keys], "own_ids": own_ids[local]}
            value = loss.calculate_loss([[q], [k]], labels)
            value.backward()
            out[name] = (float(value.detach()), q.grad.clone(), k.grad.clone())
        # the anchor term: the base model's keys are gathered from every process like the student's
        base_queries = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        base_keys = torch.randn(n * group, dim, generator=gen, dtype=torch.float64)
        loss = _anchored_loss()
        scores = loss.anchor_scores({"input_ids": base_queries[local]}, {"input_ids": base_keys[local_keys]}, {})
        q = queries[local].clone().requires_grad_()
        k = keys[local_keys].clone().requires_grad_()
        value = loss.calculate_loss([[q], [k]], {"teacher_scores": teacher[local], "anchor_scores": scores})
        value.backward()
        out["anchored"] = (float(value.detach()), q.grad.clone(), k.grad.clone())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def _duplicate_ids(n: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids with repeats inside and across the two processes' halves, and each query's own ids (its group and
    one more "labelled positive")."""
    key_ids = torch.arange(n * group) % 7
    own_ids = torch.cat([key_ids.view(n, group), (torch.arange(n) + 3)[:, None] % 7], dim=1)
    return key_ids, own_ids


class _GivenVectors(torch.nn.Module):
    """A stand-in base model whose "embedding" of a feature dict is its ``input_ids`` tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": features["input_ids"]}


def _anchored_loss():
    from llm_embedder.training.losses import StabilizedDistillationLoss
    from llm_embedder.training.losses.anchor import AnchoredLoss

    inner = StabilizedDistillationLoss(temperature=0.05)
    return AnchoredLoss(inner=inner, anchor=_GivenVectors(), weight=0.7, anchor_temperature=0.1)


def test_cross_process_losses_equal_one_process():
    from llm_embedder.training.losses import ContrastiveLoss, KLDistillationLoss, StabilizedDistillationLoss

    world = 2
    manager = mp.Manager()
    results = manager.dict()
    # fork: the children inherit the imported modules instead of importing sentence-transformers again
    mp.start_processes(_distributed_losses, args=(world, free_port(), results), nprocs=world, start_method="fork")

    n, group, dim = 6, 3, 8
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    keys = torch.randn(n * group, dim, generator=gen, dtype=torch.float64)
    teacher = torch.randn(n, group, generator=gen, dtype=torch.float64)
    key_ids, own_ids = _duplicate_ids(n, group)
    dedup = {"teacher_scores": teacher, "key_ids": key_ids, "own_ids": own_ids}
    for name, loss, labels in (
        ("contrastive", ContrastiveLoss(temperature=0.05), teacher),
        ("kl", KLDistillationLoss(temperature=0.05), teacher),
        ("stabilized", StabilizedDistillationLoss(temperature=0.05), teacher),
        ("contrastive_dedup", ContrastiveLoss(temperature=0.05), dedup),
        ("stabilized_dedup", StabilizedDistillationLoss(temperature=0.05), dedup),
    ):
        q, k = queries.clone().requires_grad_(), keys.clone().requires_grad_()
        value = loss.calculate_loss([[q], [k]], labels)
        value.backward()
        # DDP averages over processes: the objective is the mean of the per-process losses
        mean = sum(results[r][name][0] for r in range(world)) / world
        assert mean == pytest.approx(float(value.detach()), rel=1e-10), name
        q_grad = torch.cat([results[r][name][1] for r in range(world)]) / world
        k_grad = torch.cat([results[r][name][2] for r in range(world)]) / world
        torch.testing.assert_close(q_grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(k_grad, k.grad, rtol=1e-9, atol=1e-12, msg=name)
    base_queries = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    base_keys = torch.randn(n * group, dim, generator=gen, dtype=torch.float64)
    loss = _anchored_loss()
    scores = loss.anchor_scores({"input_ids": base_queries}, {"input_ids": base_keys}, {})
    q, k = queries.clone().requires_grad_(), keys.clone().requires_grad_()
    value = loss.calculate_loss([[q], [k]], {"teacher_scores": teacher, "anchor_scores": scores})
    value.backward()
    # the base's similarities are float32 (a matrix product over other row blocks rounds differently): 1e-6
    mean = sum(results[r]["anchored"][0] for r in range(world)) / world
    assert mean == pytest.approx(float(value.detach()), rel=1e-6)
    q_grad = torch.cat([results[r]["anchored"][1] for r in range(world)]) / world
    k_grad = torch.cat([results[r]["anchored"][2] for r in range(world)]) / world
    torch.testing.assert_close(q_grad, q.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(k_grad, k.grad, rtol=1e-5, atol=1e-8)
