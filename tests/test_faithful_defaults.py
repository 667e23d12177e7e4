"""The defaults that follow the authors' code (docs/results.md, "Departures from the reference"), pinned so that a
change of any of them fails here: student temperature, group sampling per task, stabilized distillation's ranking,
the ICL option rule, max_sample_num, the sampler's epoch under several processes, and the loss registry."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.data_loader import BatchSamplerShard
from train_helpers import build_tiny_model, make_records, one_step_recipe, write_jsonl

from llm_embedder.data.records import Record
from llm_embedder.errors import UserError
from llm_embedder.evaluation.downstream import icl as icl_module
from llm_embedder.evaluation.downstream.base import DownstreamSettings, RetrievedKey
from llm_embedder.evaluation.downstream.icl import ICLEvaluator, pick_option
from llm_embedder.tasks.registry import TASKS, builtin_registry
from llm_embedder.tasks.spec import TaskSpec
from llm_embedder.training.batch_sampler import HomogeneousBatchSampler
from llm_embedder.training.config import TrainConfig
from llm_embedder.training.dataset import load_training_sets
from llm_embedder.training.group_sampler import Candidates
from llm_embedder.training.losses import LOSSES, ContrastiveLoss, StabilizedDistillationLoss, register_loss
from llm_embedder.training.task_losses import build_group_sampler, build_task_loss, resolve_training_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fixed_step(n: int = 3, group: int = 4, dim: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    keys = torch.randn(n * group, dim, generator=gen, dtype=torch.float64)
    teacher = torch.randn(n, group, generator=gen, dtype=torch.float64)
    return queries, keys, teacher


def reference_stable_distill(queries, keys, teacher, tau):
    """FlagEmbedding research/llm_embedder: ``get_train_process_fn(stable_distill=True)`` sorts the NEGATIVES by
    teacher score (the positive stays first), then ``DenseRetriever._compute_loss`` (stable branch) - ported."""
    n, group = teacher.shape
    keys = keys.view(n, group, -1).clone()
    teacher = teacher.clone()
    for q in range(n):
        order = [0, *sorted(range(1, group), key=lambda j: -float(teacher[q, j]))]
        keys[q], teacher[q] = keys[q, order], teacher[q, order]
    keys = keys.reshape(n * group, -1)
    targets = F.softmax(teacher, dim=-1)
    scores = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / tau
    labels = torch.arange(n) * group
    loss, mask = 0.0, torch.zeros_like(scores)
    for i in range(group):
        temp_target = labels + i
        per_query = F.cross_entropy(scores + mask, temp_target, reduction="none")
        loss = loss + torch.mean(targets[:, i] * per_query)
        mask = torch.scatter(mask, -1, temp_target.unsqueeze(-1), torch.finfo(scores.dtype).min)
    return float(loss)


# ------------------------------------------------------------------------------------------------ temperature
def test_default_training_temperature_is_the_papers_0_01():
    """The loss a default recipe trains with, on fixed tensors, equals InfoNCE at tau = 0.01 computed by hand."""
    config = TrainConfig.from_dict({"output": "x", "data": {"tool": "tool.jsonl"}})
    loss = build_task_loss(TASKS.get("tool").training, temperature=config.model.temperature)
    queries, keys, _ = fixed_step()
    sims = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T
    expected = float(
        torch.mean(torch.logsumexp(sims / 0.01, dim=1) - (sims / 0.01)[torch.arange(3), torch.arange(3) * 4])
    )
    assert float(loss.calculate_loss([[queries], [keys]])) == pytest.approx(expected, rel=1e-10)
    assert float(ContrastiveLoss().calculate_loss([[queries], [keys]])) == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------------------ stabilized ranking
def test_stabilized_reference_rank_equals_the_authors_loss():
    queries, keys, teacher = fixed_step(n=4, group=5, seed=7)
    teacher[:, 0] = teacher.min(dim=1).values - 0.5  # the LLM prefers every negative to the labelled positive
    spec = resolve_training_spec(TASKS.get("qa").training, task="qa")
    ours = build_task_loss(spec, temperature=0.05)  # the task table's default: positive_rank reference, no InfoNCE
    assert isinstance(ours, StabilizedDistillationLoss) and ours.positive_rank == "reference"
    expected = reference_stable_distill(queries, keys, teacher, tau=0.05)
    assert float(ours.calculate_loss([[queries], [keys]], teacher)) == pytest.approx(expected, rel=1e-10)
    by_reward = StabilizedDistillationLoss(positive_rank="reward", temperature=0.05)
    assert float(by_reward.calculate_loss([[queries], [keys]], teacher)) != pytest.approx(expected, rel=1e-3)
    # with the positive on top both rankings agree
    teacher[:, 0] = teacher.max(dim=1).values + 0.5
    a = ours.calculate_loss([[queries], [keys]], teacher)
    b = by_reward.calculate_loss([[queries], [keys]], teacher)
    assert float(a) == pytest.approx(float(b), rel=1e-12)


# ------------------------------------------------------------------------------------------------ group sampling
def sampled(task: str, record: Record, seeds: range) -> list[list[str]]:
    spec = resolve_training_spec(TASKS.get(task).training, task=task)
    sampler = build_group_sampler(spec, group_size=3)
    return [sampler.sample(Candidates.from_record(record), np.random.default_rng(s)).keys for s in seeds]


def test_icl_draws_a_random_positive_and_qa_keeps_the_first():
    record = Record(query="q", pos=["p0", "p1", "p2", "p3"], neg=["n0", "n1", "n2"], teacher_scores=[0.0] * 7)
    icl_positives = Counter(keys[0] for keys in sampled("icl", record, range(200)))
    assert set(icl_positives) == {"p0", "p1", "p2", "p3"} and min(icl_positives.values()) > 20
    assert {keys[0] for keys in sampled("qa", record, range(50))} == {"p0"}


def test_qa_draws_random_negatives():
    record = Record(query="q", pos=["p"], neg=[f"n{i}" for i in range(8)], teacher_scores=[0.0] * 9)
    groups = sampled("qa", record, range(200))
    negatives = Counter(key for keys in groups for key in keys[1:])
    assert set(negatives) == {f"n{i}" for i in range(8)}  # not only the first two
    assert len({tuple(keys[1:]) for keys in groups}) > 20


# ------------------------------------------------------------------------------------------------ ICL option rule
class _FakeLM:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.model = None


@pytest.fixture(scope="module")
def llm_tokenizer():
    from transformers import AutoTokenizer

    from llm_embedder.lm.loading import resolve_lm

    return AutoTokenizer.from_pretrained(resolve_lm(None))


def test_icl_picks_the_lowest_mean_nll_option_by_default(llm_tokenizer, monkeypatch):
    """Option "No" (1 token, log p = -2.0: mean -2.0) against "Not at all" (4 tokens, log p = -4.0: mean -1.0): the
    sum prefers the short option, the reference's mean NLL the long one (the gold label here)."""
    assert pick_option([-2.0, -4.0], [1, 4], "mean") == 1
    assert pick_option([-2.0, -4.0], [1, 4], "sum") == 0
    with pytest.raises(ValueError, match="unknown option rule"):
        pick_option([-1.0], [1], "max")

    scored: list = []

    def fake_score(lm, requests, settings, desc):
        scored.extend(requests)
        return np.array([-2.0, -4.0]), np.array([1, 4])

    monkeypatch.setattr(icl_module, "score", fake_score)
    record = Record(query="Is it good?", answers=["Not at all"], options=["No", "Not at all"])
    keys = [[RetrievedKey("Was it bad?\nYes", 0), RetrievedKey("Fine?\nNo", 1)]]
    settings = DownstreamSettings(show_progress=False)
    icl = TASKS.get("icl")
    assert ICLEvaluator(icl, settings).evaluate([record], keys, _FakeLM(llm_tokenizer))["accuracy"] == 1.0
    # the reference's prompt: demonstrations joined by "\n", the most relevant right before the query
    prompt = llm_tokenizer.decode(scored[0].context_ids)
    assert prompt == "Fine?\nNo\nWas it bad?\nYes\nIs it good?\n"
    summed = TaskSpec.from_dict(
        "icl", {**icl.to_dict(), "evaluation": {**icl.to_dict()["evaluation"], "option_score": "sum"}}
    )
    assert ICLEvaluator(summed, settings).evaluate([record], keys, _FakeLM(llm_tokenizer))["accuracy"] == 0.0
    # per record, for the paired comparisons: accuracy is a mean over records, the macro accuracy is not
    scores = ICLEvaluator(summed, settings).score_records([record], keys, _FakeLM(llm_tokenizer))
    assert scores.per_record == {"accuracy": [0.0]} and set(scores.per_record) == ICLEvaluator.per_record_metrics


def test_a_users_task_gets_the_reference_defaults_for_what_it_leaves_out():
    """The built-in table spells its choices out, so the dataclass defaults are only read by a user's own task:
    a task file with no ``option_score``, ``positive``, ``negatives``, ``positive_rank`` or ``temperature`` must
    still get the reference's mean-NLL option rule, first positive, random negatives, reference rank and the run's
    temperature (a changed default would otherwise fail no test)."""
    spec = TaskSpec.from_dict(
        "mine",
        {"query_instruction": "q: ", "key_instruction": "k: ", "training": {"loss": "stabilized_distillation"}},
        source="tasks.yaml",
    )
    assert spec.evaluation.option_score == "mean"
    training = spec.training
    assert (training.positive, training.negatives, training.positive_rank) == ("first", "random", "reference")
    assert training.temperature is None and training.max_sample_num is None


# ------------------------------------------------------------------------------------------------ max_sample_num
def test_max_sample_num_keeps_the_last_records(tmp_path):
    tasks = builtin_registry()
    tasks.update_from_mapping({"qa": {"training": {"max_sample_num": 5}}}, source="test")
    rows = make_records(12, seed=4)
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    config = TrainConfig.from_dict({"output": str(tmp_path / "out"), "data": {"qa": path}, "group_size": 3})
    (qa,) = load_training_sets(config, tasks)
    assert [c.query for c in qa.items] == [r["query"] for r in rows[-5:]]
    assert qa.capped == 7 and qa.dropped == 0
    (uncapped,) = load_training_sets(config, builtin_registry())
    assert len(uncapped) == 12


# ------------------------------------------------------------------------------------------------ epochs x ranks
def test_each_epoch_has_a_new_order_and_the_ranks_stay_in_step():
    """Two simulated processes, each with its own batch sampler behind accelerate's shard and the trainer's epoch
    callback, over three epochs: a no-op epoch callback (or set_epoch) would replay epoch 0 every epoch."""
    from llm_embedder.training.trainer import _SamplerEpochCallback

    sizes = {"qa": 24, "chat": 16, "tool": 8}
    world = 2
    samplers = [HomogeneousBatchSampler(sizes, 2, num_replicas=world, seed=11) for _ in range(world)]
    callbacks = [_SamplerEpochCallback(s) for s in samplers]
    steps = samplers[0].steps_per_epoch
    epochs: list[list[list[list]]] = []  # epoch -> rank -> batches
    for epoch in range(3):
        state = SimpleNamespace(global_step=epoch * steps)
        for callback in callbacks:
            callback.on_epoch_begin(None, state, None)
        epochs.append(
            [list(BatchSamplerShard(s, num_processes=world, process_index=r)) for r, s in enumerate(samplers)]
        )
    for per_rank in epochs:
        for step in zip(*per_rank, strict=True):
            assert len({ref.dataset for batch in step for ref in batch}) == 1  # one dataset per step, all ranks
            items = [(ref.dataset, ref.index) for batch in step for ref in batch]
            assert len(set(items)) == len(items)  # the ranks of a step hold different records
        covered = Counter((ref.dataset, ref.index) for batches in per_rank for batch in batches for ref in batch)
        assert len(covered) == sum(sizes.values())  # every record once per epoch
    for rank in range(world):
        orders = [tuple((ref.dataset, ref.index) for batch in epochs[e][rank] for ref in batch) for e in range(3)]
        assert len(set(orders)) == 3, f"rank {rank} replays an epoch's order"


# ------------------------------------------------------------------------------------------------ loss registry
def test_the_task_table_knows_the_builtin_losses_without_importing_torch():
    """Reading the task table must not import torch (instant --help), so its built-in loss names are a constant:
    it must equal the registry's built-in keys."""
    import subprocess
    import sys

    from llm_embedder.tasks.spec import BUILTIN_LOSSES

    assert set(BUILTIN_LOSSES) <= set(LOSSES)
    assert {name for name, cls in LOSSES.items() if cls.__module__.startswith("llm_embedder.")} == set(BUILTIN_LOSSES)
    code = "import sys; from llm_embedder.tasks.registry import TASKS; TASKS.specs(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_registered_loss_is_valid_in_the_task_table_and_trains(tmp_path):
    from llm_embedder.training import train

    class HalfInfoNCE(ContrastiveLoss):
        """InfoNCE at half weight: a stand-in for a user's own loss."""

        def per_query_loss(self, group):
            return 0.5 * super().per_query_loss(group)

    with pytest.raises(UserError, match="'training.loss' is 'half_infonce'"):
        TaskSpec.from_dict(
            "mine", {"query_instruction": "q: ", "key_instruction": "k: ", "training": {"loss": "half_infonce"}}
        )
    register_loss("half_infonce", HalfInfoNCE)
    try:
        with pytest.raises(UserError, match="already registered"):
            register_loss("half_infonce", ContrastiveLoss)
        tasks = builtin_registry()
        training = {"loss": "half_infonce", "contrastive_weight": 0.0}
        tasks.update_from_mapping(
            {"mine": {"query_instruction": "q: ", "key_instruction": "k: ", "training": training}}, source="tasks.yaml"
        )
        assert isinstance(build_task_loss(resolve_training_spec(tasks.get("mine").training, task="mine")), HalfInfoNCE)
        model = build_tiny_model(tmp_path / "tiny")
        data = write_jsonl(tmp_path / "mine.jsonl", make_records(8, seed=5, task="mine"))
        out = tmp_path / "out"
        recipe = one_step_recipe(model, {"mine": data}, out)
        assert train(recipe, registry=tasks) == str(out)
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["metrics"]["steps"] == 1 and summary["metrics"]["training_loss"] > 0
    finally:
        LOSSES.pop("half_infonce", None)
