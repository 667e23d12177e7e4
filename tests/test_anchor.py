"""The anchor term (``training.losses.anchor``): its formula, its composition with the task loss, gradients, the
collator's plain-text columns, the frozen base, and the trainer switch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from train_helpers import build_tiny_model, make_records

from llm_embedder.errors import UserError
from llm_embedder.training.collator import GroupCollator
from llm_embedder.training.config import TrainConfig
from llm_embedder.training.losses import ContrastiveLoss, MultiTaskLoss, StabilizedDistillationLoss
from llm_embedder.training.losses.anchor import AnchoredLoss, anchor_kl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    folder = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-nodropout", dropout=0.0)
    return SentenceTransformer(folder, device="cpu")


def test_anchor_kl_is_the_direct_formula():
    gen = torch.Generator().manual_seed(3)
    student = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 2 - 1
    base = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 2 - 1
    t = 0.07
    got = anchor_kl(student, base, t)
    for i in range(3):
        zb = sum(math.exp(float(v) / t) for v in base[i])
        zs = sum(math.exp(float(v) / t) for v in student[i])
        expected = sum(
            math.exp(float(b) / t) / zb * ((float(b) / t - math.log(zb)) - (float(s) / t - math.log(zs)))
            for b, s in zip(base[i], student[i], strict=True)
        )
        assert float(got[i]) == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(anchor_kl(base, base, t), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def _batch(model, *, anchor: bool = True, n: int = 4, group: int = 3):
    rows = make_records(n, seed=21, candidates=group)
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
        model.preprocess,
        instruction=lambda task, side: f"Represent this {side} for retrieval: ",
        task_names=["qa"],
        query_max_length=48,
        key_max_length=48,
        anchor=anchor,
    )
    batch = collator(items)
    prefixes = ("query_", "key_", "anchor_query_", "anchor_key_") if anchor else ("query_", "key_")
    features = [{k[len(p) :]: v for k, v in batch.items() if k.startswith(p)} for p in prefixes]
    return items, features, batch["label"]


def test_collator_anchor_columns_are_the_plain_texts(tiny_model):
    items, features, label = _batch(tiny_model)
    assert len(features) == 4
    plain_queries = tiny_model.preprocess([it["query"] for it in items], max_length=48)
    plain_keys = tiny_model.preprocess([k for it in items for k in it["keys"]], max_length=48)
    for got, plain, order in (
        (features[2], plain_queries, label["anchor_query_order"]),
        (features[3], plain_keys, label["anchor_key_order"]),
    ):
        restored = got["input_ids"][order]
        width = int(plain["attention_mask"].sum(dim=1).max())
        assert torch.equal(restored[:, :width], plain["input_ids"][:, :width])
    # the instructed columns carry the instruction, the anchor ones do not
    assert features[0]["input_ids"].shape[1] > features[2]["input_ids"].shape[1]
    _, plain_only, plain_label = _batch(tiny_model, anchor=False)
    assert len(plain_only) == 2 and "anchor_query_order" not in plain_label


def _direct(model, base, features, label, weight, t_anchor):
    """inner task loss + weight * mean KL, from the embeddings, without AnchoredLoss."""
    q = model(dict(features[0]))["sentence_embedding"][label["query_order"]]
    k = model(dict(features[1]))["sentence_embedding"][label["key_order"]]
    with torch.no_grad():
        bq = base(dict(features[2]))["sentence_embedding"][label["anchor_query_order"]]
        bk = base(dict(features[3]))["sentence_embedding"][label["anchor_key_order"]]
    inner = StabilizedDistillationLoss(temperature=0.05)
    group = inner.score(q, k, label["teacher_scores"])
    s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).T
    b = torch.nn.functional.normalize(bq, dim=-1) @ torch.nn.functional.normalize(bk, dim=-1).T
    kl = torch.softmax(b / t_anchor, -1) * (torch.log_softmax(b / t_anchor, -1) - torch.log_softmax(s / t_anchor, -1))
    return inner.per_query_loss(group).mean() + weight * kl.sum(-1).mean()


def _grads(model, value):
    model.zero_grad()
    value.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [None, 3])
def test_anchored_loss_equals_task_loss_plus_weighted_kl(tiny_model, chunk):
    """Value and gradients against the direct formula; gradient caching gives the same."""
    student = copy.deepcopy(tiny_model)
    base = copy.deepcopy(tiny_model)
    with torch.no_grad():  # the student has moved away from the base
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    student.eval()  # no dropout in the comparison
    _, features, label = _batch(student)
    loss = AnchoredLoss(
        student,
        inner=MultiTaskLoss(losses={"qa": StabilizedDistillationLoss(temperature=0.05)}),
        anchor=base,
        weight=0.7,
        anchor_temperature=0.1,
        mini_batch_size=chunk,
    )
    got = loss([dict(f) for f in features], label)
    got_value, got_grads = float(got.detach()), _grads(student, got)
    expected = _direct(student, base, features, label, 0.7, 0.1)
    want = _grads(student, expected)
    assert got_value == pytest.approx(float(expected.detach()), rel=1e-5)
    assert got_grads.keys() == want.keys() and want
    for name, grad in want.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the base is frozen and outside the loss's parameters
    assert all(not p.requires_grad for p in base.parameters())
    assert all(p.grad is None for p in base.parameters())
    assert not any(p is q for p in loss.parameters() for q in base.parameters())


def test_weight_zero_is_the_task_loss_and_the_term_is_zero_at_the_base(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.eval()
    _, features, label = _batch(model)
    inner = MultiTaskLoss(losses={"qa": ContrastiveLoss(temperature=0.05)})
    plain = MultiTaskLoss(model, losses={"qa": ContrastiveLoss(temperature=0.05)})
    with torch.no_grad():
        zero = AnchoredLoss(model, inner=inner, anchor=copy.deepcopy(model), weight=0.0)
        assert float(zero([dict(f) for f in features], label)) == pytest.approx(
            float(plain([dict(f) for f in features[:2]], label)), rel=1e-6
        )
        # the student on the plain texts IS the base: the anchor term vanishes
        same = AnchoredLoss(model, inner=inner, anchor=copy.deepcopy(model), weight=1.0)
        labels = {**label, "anchor_scores": same.anchor_scores(features[2], features[3], label)}
        queries = model(dict(features[2]))["sentence_embedding"][label["anchor_query_order"]]
        keys = model(dict(features[3]))["sentence_embedding"][label["anchor_key_order"]]
        group = same.score(queries, keys, label["teacher_scores"])
        assert float(same.anchor_term(group, labels)) == pytest.approx(0.0, abs=1e-6)


def test_bad_anchor_settings_are_one_line_errors():
    base = {"data": ["qa=x.jsonl"], "output": "o"}
    with pytest.raises(UserError, match=r"^anchor_weight must be >= 0 \(0: no anchor term\), got -1.0$"):
        TrainConfig.from_dict({**base, "anchor_weight": -1.0}).validate()
    with pytest.raises(UserError, match=r"^anchor_temperature must be > 0, got 0.0$"):
        TrainConfig.from_dict({**base, "anchor_temperature": 0.0}).validate()
    with pytest.raises(UserError, match=r"^anchor_weight must be a finite number, got nan$"):
        TrainConfig.from_dict({**base, "anchor_weight": float("nan")}).validate()


def test_the_anchor_keeps_a_trained_model_near_the_base(tmp_path):
    """The same short run with and without the term: with it, the trained model's similarities on plain text move
    less from the base's; the card names it; a plain run does not mention it."""
    from train_helpers import write_jsonl

    from llm_embedder.training import train

    model = build_tiny_model(tmp_path / "tiny")
    data = {"qa": write_jsonl(tmp_path / "qa.jsonl", make_records(24, seed=1))}
    common = {
        "model": model,
        "data": data,
        "steps": 6,
        "batch_size": 4,
        "group_size": 3,
        "lr": 3e-3,
        "query_max_length": 48,
        "key_max_length": 48,
        "grad_cache_chunk": 4,
        "save_steps": 3,
        "num_workers": 0,
        "device": "cpu",
    }
    plain = train({**common, "output": str(tmp_path / "plain")})
    anchored = train({**common, "output": str(tmp_path / "anchored"), "anchor_weight": 20.0})
    from sentence_transformers import SentenceTransformer

    rows = make_records(8, seed=5, candidates=3)
    texts = [r["query"] for r in rows] + [k for r in rows for k in r["pos"] + r["neg"]]

    def sims(folder: str) -> torch.Tensor:
        st = SentenceTransformer(folder, device="cpu")
        vectors = torch.nn.functional.normalize(st.encode(texts, convert_to_tensor=True), dim=-1)
        return vectors[:8] @ vectors[8:].T

    base = sims(model)
    drift_plain = (sims(plain) - base).abs().mean()
    drift_anchored = (sims(anchored) - base).abs().mean()
    assert drift_anchored < drift_plain
    assert (
        "anchor to the base model's plain-text similarities: weight 20"
        in (tmp_path / "anchored" / "README.md").read_text()
    )
    assert "anchor to the base" not in (tmp_path / "plain" / "README.md").read_text()


def test_per_task_weights_weigh_each_querys_kl_by_its_task(tiny_model):
    """``task_weights`` overrides lambda for the queries of the tasks it names, row by row (a mixed step here)."""
    model = copy.deepcopy(tiny_model)
    base = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    _, features, label = _batch(model)
    label = {**label, "task": torch.tensor([0, 1, 0, 1])}

    def losses():
        return {"qa": StabilizedDistillationLoss(temperature=0.05), "tool": ContrastiveLoss(temperature=0.05)}

    loss = AnchoredLoss(
        model, inner=MultiTaskLoss(losses=losses()), anchor=base, weight=0.7, task_weights={"tool": 2.0}
    )
    with torch.no_grad():
        got = float(loss([dict(f) for f in features], label))
        inner = float(MultiTaskLoss(model, losses=losses())([dict(f) for f in features[:2]], label))
        q = model(dict(features[0]))["sentence_embedding"][label["query_order"]]
        k = model(dict(features[1]))["sentence_embedding"][label["key_order"]]
        bq = base(dict(features[2]))["sentence_embedding"][label["anchor_query_order"]]
        bk = base(dict(features[3]))["sentence_embedding"][label["anchor_key_order"]]
        s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).T
        b = torch.nn.functional.normalize(bq, dim=-1) @ torch.nn.functional.normalize(bk, dim=-1).T
        kl = anchor_kl(s, b, 0.05)
    assert float(kl[1]) > 0 and float(kl[0]) > 0
    expected = inner + float((torch.tensor([0.7, 2.0, 0.7, 2.0]) * kl).mean())
    assert got == pytest.approx(expected, rel=1e-5)
    assert loss.get_config_dict()["anchor_task_weights"] == {"tool": 2.0}
    with pytest.raises(ValueError, match=r"unknown task\(s\) chat"):
        AnchoredLoss(model, inner=MultiTaskLoss(losses=losses()), anchor=base, weight=1.0, task_weights={"chat": 0})


def test_per_task_anchor_settings(tmp_path):
    from llm_embedder.cli.main import build_parser
    from llm_embedder.cli.train import overrides_from_args

    base = {"data": ["qa=x.jsonl"], "output": "o"}
    with pytest.raises(UserError, match=r"^anchor_task_weights.tool must be >= 0 \(0: no anchor on tool\), got -2.0$"):
        TrainConfig.from_dict({**base, "anchor_task_weights": {"tool": -2.0}}).validate()
    with pytest.raises(UserError, match=r"^anchor_task_weights.tool must be a finite number, got inf$"):
        TrainConfig.from_dict({**base, "anchor_task_weights": {"tool": float("inf")}}).validate()
    with pytest.raises(UserError, match=r"^anchor_task_weights must be a mapping, got \['tool'\]"):
        TrainConfig.from_dict({**base, "anchor_task_weights": ["tool"]}).validate()
    args = build_parser().parse_args(
        ["train", "--data", "qa=x.jsonl", "--anchor-weight", "4", "--anchor-task-weight", "tool=0"]
    )
    overrides = overrides_from_args(args)
    assert overrides["anchor_weight"] == 4.0 and overrides["anchor_task_weights"] == {"tool": 0.0}
    assert TrainConfig.from_dict({**overrides, "output": "o"}).model.anchor_task_weights == {"tool": 0.0}


def test_trainer_anchors_when_only_a_task_weight_is_set_and_refuses_unknown_tasks(tmp_path):
    from train_helpers import one_step_recipe, write_jsonl

    from llm_embedder.training import train

    model = build_tiny_model(tmp_path / "tiny")
    data = {"qa": write_jsonl(tmp_path / "qa.jsonl", make_records(8, seed=1))}
    with pytest.raises(UserError, match=r"^anchor_task_weights names task\(s\) tool that no training dataset has"):
        train(one_step_recipe(model, data, tmp_path / "bad", anchor_task_weights={"tool": 0.0}))
    train(one_step_recipe(model, data, tmp_path / "qa-only", anchor_task_weights={"qa": 3.0}))
    card = (tmp_path / "qa-only" / "README.md").read_text()
    assert "anchor to the base model's plain-text similarities: weight 0, qa 3" in card
