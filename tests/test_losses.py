"""The losses against direct per-query formulas, their special cases, and gradient caching == no caching."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from llm_embedder.training.losses import (
    ContrastiveLoss,
    KLDistillationLoss,
    MultiTaskLoss,
    StabilizedDistillationLoss,
    WeightedLoss,
    base,
    contrastive,
    kl_distillation,
    multitask,
    stabilized_distillation,
    weighted,
)

TAU = 0.05  # a bit softer than 0.01 so every term matters in the comparisons


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_step(n: int = 5, group: int = 4, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    keys = torch.randn(n * group, dim, generator=gen, dtype=torch.float64)
    teacher = torch.randn(n, group, generator=gen, dtype=torch.float64)
    return queries, keys, teacher


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_contrastive(queries, keys, teacher, group):
    losses = []
    for i in range(len(queries)):
        logits = [cos(queries[i], k) / TAU for k in keys]
        losses.append(logsumexp(logits) - logits[i * group])
    return sum(losses) / len(losses)


def loop_kl(queries, keys, teacher, group, teacher_temperature=0.1):
    losses = []
    for i in range(len(queries)):
        own = [cos(queries[i], keys[i * group + j]) / TAU for j in range(group)]
        log_student = [v - logsumexp(own) for v in own]
        t = [float(x) / teacher_temperature for x in teacher[i]]
        p = [math.exp(v - logsumexp(t)) for v in t]
        losses.append(sum(pj * (math.log(pj) - lj) for pj, lj in zip(p, log_student, strict=True) if pj > 0))
    return sum(losses) / len(losses)


def loop_stabilized(queries, keys, teacher, group, alpha=1.0, positive_rank="reference"):
    losses = []
    for i in range(len(queries)):
        rewards = [float(x) for x in teacher[i]]
        if positive_rank == "reward":
            ranked = sorted(range(group), key=lambda j: -rewards[j])  # p_1 >= p_2 >= ... (stable)
        else:  # the labelled positive stays p_1, the negatives by reward (the authors' code)
            ranked = [0, *sorted(range(1, group), key=lambda j: -rewards[j])]
        weights = [math.exp(r / alpha - logsumexp([x / alpha for x in rewards])) for r in rewards]
        others = [cos(queries[i], keys[k]) / TAU for k in range(len(keys)) if k // group != i]
        total = 0.0
        for position, j in enumerate(ranked):
            below = [cos(queries[i], keys[i * group + m]) / TAU for m in ranked[position:]]
            logit = cos(queries[i], keys[i * group + j]) / TAU
            total -= weights[j] * (logit - logsumexp(below + others))
        losses.append(total)
    return sum(losses) / len(losses)


CASES = [
    (ContrastiveLoss(temperature=TAU), loop_contrastive),
    (KLDistillationLoss(teacher_temperature=0.1, temperature=TAU), loop_kl),
    (StabilizedDistillationLoss(alpha=1.0, temperature=TAU), loop_stabilized),
    (StabilizedDistillationLoss(alpha=0.5, temperature=TAU), lambda *a: loop_stabilized(*a, alpha=0.5)),
    (
        StabilizedDistillationLoss(positive_rank="reward", temperature=TAU),
        lambda *a: loop_stabilized(*a, positive_rank="reward"),
    ),
]


@pytest.mark.parametrize(
    "loss, reference", CASES, ids=["contrastive", "kl", "stabilized", "stabilized-alpha", "stabilized-reward-rank"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_per_query_formula(loss, reference, seed):
    queries, keys, teacher = random_step(seed=seed)
    value = loss.calculate_loss([[queries], [keys]], teacher)
    assert float(value) == pytest.approx(reference(queries, keys, teacher, 4), rel=1e-9, abs=1e-9)


def test_single_query_has_no_in_batch_keys():
    queries, keys, teacher = random_step(n=1, group=5)
    value = StabilizedDistillationLoss(temperature=TAU).calculate_loss([[queries], [keys]], teacher)
    assert float(value) == pytest.approx(loop_stabilized(queries, keys, teacher, 5), rel=1e-9)
    grad_keys = keys.clone().requires_grad_()
    StabilizedDistillationLoss(temperature=TAU).calculate_loss([[queries], [grad_keys]], teacher).backward()
    assert torch.isfinite(grad_keys.grad).all()


def test_stabilized_with_one_hot_reward_is_infonce():
    queries, keys, _ = random_step(n=6, group=4, seed=3)
    one_hot = torch.zeros(6, 4, dtype=torch.float64)
    one_hot[:, 0] = 1.0
    # softmax(one_hot / alpha) is one-hot in floating point for a tiny alpha
    stabilized = StabilizedDistillationLoss(alpha=1e-4, temperature=TAU).calculate_loss([[queries], [keys]], one_hot)
    infonce = ContrastiveLoss(temperature=TAU).calculate_loss([[queries], [keys]])
    assert float(stabilized) == pytest.approx(float(infonce), rel=1e-12)


@pytest.mark.parametrize(("rank", "perm"), [("reference", [0, 3, 1, 2]), ("reward", [2, 0, 3, 1])])
def test_stabilized_sorts_by_reward(rank, perm):
    """The order of what is ranked by reward must not matter (a variant without the sort is not rank-aware): the
    negatives' order (reference: the positive stays first), the whole group's order (reward)."""
    queries, keys, teacher = random_step(n=3, group=4, seed=4)
    loss = StabilizedDistillationLoss(temperature=TAU, positive_rank=rank)
    perm = torch.tensor(perm)
    shuffled_keys = keys.view(3, 4, -1)[:, perm].reshape(12, -1)
    a = loss.calculate_loss([[queries], [keys]], teacher)
    b = loss.calculate_loss([[queries], [shuffled_keys]], teacher[:, perm])
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_kl_is_zero_when_student_matches_teacher():
    queries, keys, _ = random_step(n=4, group=3, seed=5)
    loss = KLDistillationLoss(teacher_temperature=TAU, temperature=TAU)
    own = loss.score(queries, keys).own()
    assert float(loss.calculate_loss([[queries], [keys]], own)) == pytest.approx(0.0, abs=1e-12)


def test_weighted_and_multitask_compose():
    queries, keys, teacher = random_step(n=6, group=4, seed=6)
    c, s, k = (
        ContrastiveLoss(temperature=TAU),
        StabilizedDistillationLoss(temperature=TAU),
        KLDistillationLoss(temperature=TAU),
    )
    weighted_loss = WeightedLoss(parts=[(0.2, c), (1.0, s)])
    value = weighted_loss.calculate_loss([[queries], [keys]], teacher)
    expected = 0.2 * loop_contrastive(queries, keys, teacher, 4) + loop_stabilized(queries, keys, teacher, 4)
    assert float(value) == pytest.approx(expected, rel=1e-9)

    multi = MultiTaskLoss(losses={"qa": weighted_loss, "chat": k})
    task = torch.tensor([0, 1, 0, 1, 1, 0])
    value = multi.calculate_loss([[queries], [keys]], {"task": task, "teacher_scores": teacher})
    group = multi.score(queries, keys, teacher)
    per_query = torch.where(task == 0, weighted_loss.per_query_loss(group), k.per_query_loss(group))
    assert float(value) == pytest.approx(float(per_query.mean()), rel=1e-12)


# ------------------------------------------------------------------ in-batch duplicates (in_batch_duplicates: mask)
#: a step of 3 queries x group 3 whose records share texts, as turns of one conversation do: "p0" is query 0's
#: positive and query 1's negative; "p0b", query 0's second labelled positive, is not in its group but is query 2's
#: negative; "n" is a negative of queries 0 and 2
DUP_GROUPS = [["p0", "n", "a"], ["p1", "p0", "b"], ["p2", "n", "p0b"]]
DUP_POSITIVES = [["p0", "p0b"], ["p1"], []]


def duplicate_step():
    """Items through the collator (for its ``key_ids`` / ``own_ids``), and embeddings: one vector per distinct text,
    so a duplicate scores exactly like the original."""
    from llm_embedder.training.collator import GroupCollator

    items = [
        {
            "dataset": "d",
            "task": "qa",
            "query": f"q{i}",
            "keys": keys,
            "positives": pos,
            "teacher_scores": None,
            "id": i,
        }
        for i, (keys, pos) in enumerate(zip(DUP_GROUPS, DUP_POSITIVES, strict=True))
    ]

    def preprocess(texts, max_length, prompt=None):
        return {"input_ids": torch.zeros(len(texts), 1, dtype=torch.long)}

    collator = GroupCollator(
        preprocess,
        instruction=lambda task, side: "",
        task_names=["qa"],
        query_max_length=8,
        key_max_length=8,
        duplicates=True,
    )
    label = collator(items)["label"]
    texts = sorted({t for keys in DUP_GROUPS for t in keys})
    gen = torch.Generator().manual_seed(7)
    vectors = dict(zip(texts, torch.randn(len(texts), 6, generator=gen, dtype=torch.float64), strict=True))
    queries = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    keys = torch.stack([vectors[t] for group in DUP_GROUPS for t in group])
    teacher = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    return queries, keys, teacher, {"key_ids": label["key_ids"], "own_ids": label["own_ids"]}


def no_negative(i: int, k: int, group: int = 3) -> bool:
    """Key ``k`` is no negative of query ``i``: another group's copy of one of ``i``'s own keys or positives."""
    text = [t for g in DUP_GROUPS for t in g][k]
    return k // group != i and text in {*DUP_GROUPS[i], *DUP_POSITIVES[i]}


@pytest.mark.parametrize("mask", [True, False], ids=["mask", "keep"])
def test_in_batch_duplicates_of_a_querys_own_texts_are_no_negatives(mask):
    """Under ``in_batch_duplicates: mask`` InfoNCE and stabilized distillation leave out of the denominator every
    key of another group that is one of the query's own keys or labelled positives (sampled or not), and only
    those; without the ids (``keep``, the reference) every other key stays a negative."""
    queries, keys, teacher, ids = duplicate_step()
    excluded = [(i, k) for i in range(3) for k in range(9) if no_negative(i, k)]
    # query 0: p0 in group 1, n and p0b in group 2; query 1: its negative p0 in group 0; query 2: n in group 0
    assert excluded == [(0, 4), (0, 7), (0, 8), (1, 0), (2, 1)]
    labels = {"teacher_scores": teacher, **(ids if mask else {})}
    skip = set(excluded) if mask else set()

    def contrastive_loop():
        total = 0.0
        for i in range(3):
            logits = [cos(queries[i], keys[k]) / TAU for k in range(9) if (i, k) not in skip]
            total += logsumexp(logits) - cos(queries[i], keys[3 * i]) / TAU
        return total / 3

    def stabilized_loop():
        total = 0.0
        for i in range(3):
            rewards = [float(x) for x in teacher[i]]
            ranked = [0, *sorted(range(1, 3), key=lambda j: -rewards[j])]
            weights = [math.exp(r - logsumexp(rewards)) for r in rewards]
            others = [cos(queries[i], keys[k]) / TAU for k in range(9) if k // 3 != i and (i, k) not in skip]
            for position, j in enumerate(ranked):
                below = [cos(queries[i], keys[3 * i + m]) / TAU for m in ranked[position:]]
                total -= weights[j] * (cos(queries[i], keys[3 * i + j]) / TAU - logsumexp(below + others))
        return total / 3

    contrastive_value = ContrastiveLoss(temperature=TAU).calculate_loss([[queries], [keys]], labels)
    assert float(contrastive_value) == pytest.approx(contrastive_loop(), rel=1e-9)
    stabilized_value = StabilizedDistillationLoss(temperature=TAU).calculate_loss([[queries], [keys]], labels)
    assert float(stabilized_value) == pytest.approx(stabilized_loop(), rel=1e-9)
    # and the masked loss differs from the reference's on this step: the mask is not a no-op
    reference = ContrastiveLoss(temperature=TAU).calculate_loss([[queries], [keys]], teacher)
    assert (float(contrastive_value) != pytest.approx(float(reference), rel=1e-6)) is mask


def test_in_batch_duplicate_ids_are_stable_text_hashes():
    """The ids are compared across data-loader workers and processes, so they must not be Python's salted
    ``hash``: a pinned BLAKE2b value, equal texts equal ids, different texts different ids."""
    from llm_embedder.training.collator import text_ids

    ids = text_ids(["p0", "p0", "p1", ""])
    assert ids.dtype == torch.int64
    assert ids[0] == ids[1] and ids[0] != ids[2] and ids[2] != ids[3]
    assert int(ids[0]) == int.from_bytes(
        __import__("hashlib").blake2b(b"p0", digest_size=8).digest(), "little", signed=True
    )


def test_distillation_needs_teacher_scores():
    queries, keys, _ = random_step()
    with pytest.raises(ValueError, match="teacher scores"):
        KLDistillationLoss().calculate_loss([[queries], [keys]])


@pytest.mark.parametrize("module", [base, contrastive, kl_distillation, stabilized_distillation, weighted, multitask])
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False)
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------- gradient caching
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sentence_transformers import SentenceTransformer
    from train_helpers import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-nodropout", dropout=0.0)
    return SentenceTransformer(folder, device="cpu")


def _features(model, n: int = 6, group: int = 3):
    from train_helpers import make_records

    rows = make_records(n, seed=11, candidates=group)
    queries = model.preprocess([r["query"] for r in rows], prompt="Represent this query: ", max_length=32)
    keys = model.preprocess([k for r in rows for k in r["pos"] + r["neg"]], max_length=32)
    teacher = torch.tensor([r["teacher_scores"] for r in rows])
    return queries, keys, teacher


def _loss_and_grads(loss, model, features, labels):
    model.zero_grad()
    value = loss([dict(f) for f in features], labels)
    value.backward()
    return float(value.detach()), {
        name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda model, chunk: ContrastiveLoss(model, mini_batch_size=chunk),
        lambda model, chunk: KLDistillationLoss(model, teacher_temperature=0.1, mini_batch_size=chunk),
        lambda model, chunk: StabilizedDistillationLoss(model, mini_batch_size=chunk),
        lambda model, chunk: MultiTaskLoss(
            model,
            losses={
                "qa": WeightedLoss(parts=[(0.2, ContrastiveLoss()), (1.0, StabilizedDistillationLoss())]),
                "chat": KLDistillationLoss(teacher_temperature=0.1),
            },
            mini_batch_size=chunk,
        ),
    ],
    ids=["contrastive", "kl", "stabilized", "multitask"],
)
def test_gradient_cache_equals_plain_backward(tiny_model, build):
    model = tiny_model
    model.train()
    queries, keys, teacher = _features(model)
    labels = {"teacher_scores": teacher, "task": torch.tensor([0, 1, 0, 0, 1, 1])}
    plain_loss, plain_grads = _loss_and_grads(build(model, None), model, (queries, keys), labels)
    cached_loss, cached_grads = _loss_and_grads(build(model, 4), model, (queries, keys), labels)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == cached_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_length_sorted_columns_give_the_same_loss(tiny_model):
    """The collator sorts each column by length (cheap gradient-cache chunks); the loss restores group order."""
    from train_helpers import make_records

    from llm_embedder.training.collator import GroupCollator

    rows = make_records(5, seed=12, candidates=3)
    for i, row in enumerate(rows):  # very different lengths, so sorting really permutes
        row["query"] += " omega" * (7 * i)
        row["neg"][0] += " delta" * (11 * (4 - i))
    items = [
        {
            "dataset": "qa",
            "task": "qa",
            "query": r["query"],
            "keys": r["pos"] + r["neg"],
            "teacher_scores": r["teacher_scores"],
            "id": str(i),
        }
        for i, r in enumerate(rows)
    ]
    collator = GroupCollator(
        tiny_model.preprocess,
        instruction=lambda task, side: f"{side}: ",
        task_names=["qa"],
        query_max_length=64,
        key_max_length=64,
    )
    batch = collator(items)
    assert not torch.equal(batch["label"]["key_order"], torch.arange(15))
    features = [{k[len(p) :]: v for k, v in batch.items() if k.startswith(p)} for p in ("query_", "key_")]
    loss = StabilizedDistillationLoss(tiny_model, mini_batch_size=4)
    tiny_model.eval()
    with torch.no_grad():
        sorted_value = loss(features, batch["label"])
        plain = [
            tiny_model.preprocess([it["query"] for it in items], prompt="query: ", max_length=64),
            tiny_model.preprocess([k for it in items for k in it["keys"]], prompt="key: ", max_length=64),
        ]
        plain_value = StabilizedDistillationLoss(tiny_model).forward(plain, batch["label"]["teacher_scores"])
    assert float(sorted_value) == pytest.approx(float(plain_value), rel=1e-5)
