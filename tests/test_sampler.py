"""Group sampling rules and the HomogeneousBatchSampler (single process; the 2-process run is in
test_distributed_training.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard

from llm_embedder.data.records import Record
from llm_embedder.errors import UserError
from llm_embedder.training.batch_sampler import HomogeneousBatchSampler, SampleRef
from llm_embedder.training.group_sampler import Candidates, GroupSampler


def candidates(pos: int = 1, neg: int = 5, scores: list[float] | None = None, history: bool = False) -> Candidates:
    keys = [f"p{i}" for i in range(pos)] + [f"n{i}" for i in range(neg)]
    if history:
        record = Record(query="q", history=keys, teacher_scores=scores)
    else:
        record = Record(query="q", pos=keys[:pos], neg=keys[pos:], teacher_scores=scores)
    return Candidates.from_record(record)


# ------------------------------------------------------------------------------------------------ group sampling
def test_first_positive_and_scores_follow_keys():
    scores = [0.5, 0.1, 0.2, 0.3, 0.4, 0.9]
    group = GroupSampler(4).sample(candidates(scores=scores), np.random.default_rng(0))
    assert group.keys[0] == "p0" and len(group.keys) == 4 and len(set(group.keys)) == 4
    by_key = dict(zip(["p0", "n0", "n1", "n2", "n3", "n4"], scores, strict=True))
    assert group.teacher_scores == [by_key[k] for k in group.keys]


def test_random_positive_draws_among_positives():
    seen = {
        GroupSampler(2, positive="random").sample(candidates(pos=3), np.random.default_rng(s)).keys[0]
        for s in range(40)
    }
    assert seen == {"p0", "p1", "p2"}


def test_teacher_positive_is_removed_from_negatives_and_history_is_the_candidates():
    scores = [0.1, 0.2, 3.0, 0.3, 0.0]
    c = candidates(pos=0, neg=5, scores=scores, history=True)
    assert c.keys == ("n0", "n1", "n2", "n3", "n4") and c.num_pos == 0
    for seed in range(10):
        group = GroupSampler(5, positive="teacher").sample(c, np.random.default_rng(seed))
        assert group.teacher_scores[0] == 3.0
        assert group.keys[0] not in group.keys[1:]
        assert sorted(group.keys) == sorted(c.keys)


def test_no_pos_falls_back_to_highest_score():
    group = GroupSampler(3, positive="first").sample(
        candidates(pos=0, neg=4, scores=[0, 5, 1, 2]), np.random.default_rng(0)
    )
    assert group.keys[0] == "n1"


def test_negatives_first_and_by_teacher_score():
    c = candidates(pos=1, neg=5, scores=[9, 1, 5, 3, 4, 2])
    rng = np.random.default_rng(0)
    assert GroupSampler(4, negatives="first").sample(c, rng).keys == ["p0", "n0", "n1", "n2"]
    group = GroupSampler(4, negatives="teacher").sample(c, rng)
    assert group.keys == ["p0", "n1", "n3", "n2"] and group.teacher_scores == [9, 5, 4, 3]


def test_too_few_negatives_are_repeated_like_the_reference():
    group = GroupSampler(8).sample(candidates(pos=1, neg=3), np.random.default_rng(0))
    counts = Counter(group.keys[1:])
    assert set(counts) == {"n0", "n1", "n2"} and sum(counts.values()) == 7 and max(counts.values()) <= 3


def test_problems_are_reported_before_training():
    assert GroupSampler(8, repeat=False).problem(candidates(neg=3))[0] == "neg"
    assert GroupSampler(8).problem(candidates(neg=3)) is None
    assert GroupSampler(2).problem(candidates(pos=1, neg=0))[0] == "neg"
    assert GroupSampler(2).problem(candidates(pos=0, neg=3))[0] == "pos"  # no pos, no scores
    assert GroupSampler(2, positive="teacher").problem(candidates(neg=3))[0] == "teacher_scores"
    assert GroupSampler(1).problem(candidates(pos=1, neg=0)) is None


def test_margin_filter():
    sampler = GroupSampler(2, min_score_margin=0.1)
    assert not sampler.keeps(candidates(scores=[0.0, 0.05, 0.01, 0.0, 0.02, 0.03]))
    assert sampler.keeps(candidates(scores=[0.0, 0.5, 0.01, 0.0, 0.02, 0.03]))
    assert sampler.keeps(candidates())  # unscored records are not judged by the margin


def test_callable_escape_hatch():
    sampler = GroupSampler(3, positive=lambda c, rng: len(c.keys) - 1, negatives=lambda pool, c, n, rng: pool[:n])
    assert sampler.sample(candidates(), np.random.default_rng(0)).keys == ["n4", "p0", "n0"]


# ------------------------------------------------------------------------------------------------ batch sampler
SIZES = {"qa": 40, "chat": 24, "tool": 16}


def steps_per_rank(sampler: HomogeneousBatchSampler, world: int) -> list[list[list[SampleRef]]]:
    """The batches each rank gets through accelerate's shard (what the trainer does)."""
    per_rank = [list(BatchSamplerShard(sampler, num_processes=world, process_index=r)) for r in range(world)]
    return [list(step) for step in zip(*per_rank, strict=True)]


def test_every_step_is_one_dataset_on_all_ranks():
    sampler = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=3)
    steps = steps_per_rank(sampler, 2)
    assert len(steps) == sampler.steps_per_epoch == 5 + 3 + 2
    for step in steps:
        datasets = {ref.dataset for batch in step for ref in batch}
        assert len(datasets) == 1
        assert all(len(batch) == 4 for batch in step)
        ids = [(ref.dataset, ref.index) for batch in step for ref in batch]
        assert len(set(ids)) == len(ids)  # the ranks of a step hold different records


def test_proportions_follow_size_and_weights():
    sampler = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=0)
    counts = Counter(step[0][0].dataset for step in steps_per_rank(sampler, 2))
    assert counts == {0: 5, 1: 3, 2: 2}
    # one epoch visits every record once (sizes are multiples of the global batch here)
    seen = Counter((ref.dataset, ref.index) for batch in sampler for ref in batch)
    assert len(seen) == sum(SIZES.values()) and set(seen.values()) == {1}

    weighted = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, weights={"tool": 2.0, "qa": 0.5})
    assert weighted.steps_per_dataset() == {"qa": 2, "chat": 3, "tool": 4}
    counts = Counter(step[0][0].dataset for step in steps_per_rank(weighted, 2))
    assert counts == {0: 2, 1: 3, 2: 4}


def test_order_is_a_function_of_seed_and_epoch():
    a = list(HomogeneousBatchSampler(SIZES, 4, seed=1))
    b = list(HomogeneousBatchSampler(SIZES, 4, seed=1))
    c = list(HomogeneousBatchSampler(SIZES, 4, seed=2))
    assert a == b and a != c
    later = HomogeneousBatchSampler(SIZES, 4, seed=1)
    later.set_epoch(1)
    assert list(later) != a


def test_resume_continues_the_same_sequence():
    full = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=5)
    full.set_epoch(2)
    expected = list(full)

    first = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=5)
    first.set_epoch(2)
    iterator = iter(first)
    head = [next(iterator) for _ in range(6)]  # 3 steps x 2 ranks
    state = first.state_dict()
    assert state["epoch"] == 2 and state["step"] == 3

    resumed = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=5)
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected

    other = HomogeneousBatchSampler(SIZES, 8, num_replicas=2, seed=5)
    with pytest.raises(UserError, match="batch_size"):
        other.load_state_dict(state)


def test_rank_argument_without_a_sharding_wrapper():
    both = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=7)
    rank1 = HomogeneousBatchSampler(SIZES, 4, num_replicas=2, seed=7, rank=1)
    assert list(rank1) == list(both)[1::2] and len(rank1) == both.steps_per_epoch


def test_mixed_mode_mixes_datasets():
    sampler = HomogeneousBatchSampler(SIZES, 8, seed=0, mode="mixed")
    batches = list(sampler)
    assert len(batches) == sum(SIZES.values()) // 8
    assert any(len({ref.dataset for ref in batch}) > 1 for batch in batches)


def test_dataset_smaller_than_a_step_is_an_error():
    with pytest.raises(UserError, match="dataset 'tool' has 16 usable record"):
        HomogeneousBatchSampler(SIZES, 12, num_replicas=2)
    HomogeneousBatchSampler(SIZES, 12, num_replicas=2, mode="mixed")  # mixing only needs the total


def test_dataloader_workers_give_the_same_batches(tmp_path):
    """Batches of indices with a real batch size: workers load them in parallel, results do not depend on them."""
    import torch
    from torch.utils.data import DataLoader

    from llm_embedder.training.dataset import GroupDataset, TrainingSet

    sets = [
        TrainingSet(name, name, "-", None, GroupSampler(3), [candidates(neg=4) for _ in range(size)])  # type: ignore[arg-type]
        for name, size in SIZES.items()
    ]

    def collate(items):
        return [(item["dataset"], item["id"], tuple(item["keys"])) for item in items]

    def run(workers: int):
        sampler = HomogeneousBatchSampler(SIZES, 4, seed=9)
        loader = DataLoader(GroupDataset(sets), batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return list(loader)

    torch.set_num_threads(1)
    single, parallel = run(0), run(2)
    assert single == parallel and all(len(batch) == 4 for batch in single)
