"""LM precision: bf16-mixed (the scoring default where bf16 is native) scores like fp32 - within a tolerance, with
the same candidate rankings - and fp32 stays available by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_embedder.data.records import Record, load_records
from llm_embedder.errors import UserError
from llm_embedder.lm import precision
from llm_embedder.lm.loading import load_causal_lm
from llm_embedder.reward import RewardScorer
from tests.test_reward import lm_folder, sample_records, tokenizer  # noqa: F401 - shared fixtures


def test_auto_is_bf16_mixed_only_where_bf16_is_native(monkeypatch):
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: True)
    assert precision.resolve_dtype("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: False)
    assert precision.resolve_dtype("auto", "cpu") == "fp32"
    assert precision.resolve_dtype("fp32", "cpu") == "fp32"
    assert precision.DEFAULT_SCORING_DTYPE == "auto"
    with pytest.raises(UserError) as e:
        precision.resolve_dtype("int8", "cpu")
    assert str(e.value) == "unknown dtype 'int8' (choose one of auto, fp32, bf16-mixed, bf16, fp16)"


def test_bf16_mixed_stores_the_decoders_linear_weights_in_bf16_and_autocasts(lm_folder):  # noqa: F811
    model, _ = load_causal_lm(str(lm_folder), dtype="bf16-mixed", device="cpu")
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    # the embeddings and the LM head (untied here; SmolLM2 ties them) stay float32: the scorer runs the head in float32
    assert head.weight.dtype == torch.float32 and model.get_input_embeddings().weight.dtype == torch.float32
    assert precision.autocast_dtype(model) == torch.bfloat16
    plain, _ = load_causal_lm(str(lm_folder), dtype="fp32", device="cpu")
    assert precision.autocast_dtype(plain) is None
    assert all(p.dtype == torch.float32 for p in plain.parameters())


def test_stored_bf16_weights_score_exactly_what_autocast_computed(data_dir, lm_folder):  # noqa: F811
    """The weights are stored in bf16 to save autocast's cast of every weight on every call, not to change a
    number: the same rewards, bit for bit, as float32 weights under the same autocast."""
    stored, tok = load_causal_lm(str(lm_folder), dtype="bf16-mixed", device="cpu")
    autocast_only, _ = load_causal_lm(str(lm_folder), dtype="fp32", device="cpu")
    precision._AUTOCAST[autocast_only] = torch.bfloat16
    precision._fuse_siblings(autocast_only)  # the same products as bf16-mixed, from float32 weights
    for task in ("qa", "lrlm"):
        records = sample_records(data_dir, task, n=2, candidates=3)
        a = RewardScorer(stored, tok, task=task, max_key_tokens=128).score(records)
        b = RewardScorer(autocast_only, tok, task=task, max_key_tokens=128).score(records)
        fp32 = RewardScorer(load_causal_lm(str(lm_folder))[0], tok, task=task, max_key_tokens=128).score(records)
        for x, y, z in zip(a, b, fp32, strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y)), (task, x, y)
            assert not np.array_equal(np.asarray(x), np.asarray(z))  # bf16 really ran


def test_a_bf16_mixed_lm_generates_in_its_precision(lm_folder):  # noqa: F811
    """Generation enters the model's precision too (its Linear weights are bf16: plain float32 inputs would fail)."""
    from llm_embedder.evaluation.downstream.base import LanguageModel
    from llm_embedder.evaluation.downstream.qa import generate_greedy
    from llm_embedder.serving.generation import Generator

    model, tok = load_causal_lm(str(lm_folder), dtype="bf16-mixed", device="cpu")
    prompts = [tok("The capital of France is", add_special_tokens=False)["input_ids"], [1, 2, 3]]
    out = generate_greedy(LanguageModel(model, tok), prompts, max_new_tokens=3, batch_size=2, show_progress=False)
    assert len(out) == 2 and all(isinstance(text, str) for text in out)
    assert isinstance(Generator(model, tok, max_new_tokens=3)("Hello"), str)


def _scores(folder, dtype, records, task):
    model, tok = load_causal_lm(str(folder), dtype=dtype, device="cpu")
    return [np.asarray(s) for s in RewardScorer(model, tok, task=task, max_key_tokens=128).score(records)]


@pytest.mark.parametrize("task", ["qa", "chat", "lrlm"])
def test_tiny_lm_bf16_mixed_rewards_within_tolerance_of_fp32(task, data_dir, lm_folder):  # noqa: F811
    records = sample_records(data_dir, task, n=2, candidates=3)
    exact = _scores(lm_folder, "fp32", records, task)
    mixed = _scores(lm_folder, "bf16-mixed", records, task)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(exact, mixed, strict=True))
    assert 0 < diff < 0.02, diff  # > 0: the bf16 path really ran (a silent fp32 fallback would give 0)


def test_bundled_lm_bf16_mixed_ranks_candidates_like_fp32(data_dir):
    """Real SmolLM2 on a fixed set (each toy qa question, its gold passage and two other questions' passages):
    every record's candidate ranking is the same in bf16-mixed as in fp32, rewards within 0.05 nats."""
    source = load_records(data_dir / "toy/qa.jsonl", task="qa")
    records = []
    for i, record in enumerate(source):
        unrelated = [source[(i + k) % len(source)].pos[0] for k in (1, 4)]
        records.append(Record(query=record.query, pos=record.pos[:1], neg=unrelated, answers=record.answers, task="qa"))
    exact = _scores("smollm2", "fp32", records, "qa")
    mixed = _scores("smollm2", "bf16-mixed", records, "qa")
    for a, b in zip(exact, mixed, strict=True):
        assert list(np.argsort(-a)) == list(np.argsort(-b)), (a, b)
        assert float(np.abs(a - b).max()) < 0.05, (a, b)


def test_bf16_mixed_keeps_the_selected_positions_fast_path(lm_folder):  # noqa: F811
    """Under autocast the model's own logits are bf16-rounded; the one-off check that the fast path (LM head on
    answer rows only) reproduces them must still pass, or every batch would pay for full-vocabulary logits."""
    from llm_embedder.lm.likelihood import _Scorer

    model, _ = load_causal_lm(str(lm_folder), dtype="bf16-mixed", device="cpu")
    with torch.inference_mode(), precision.precision_context(model, torch.device("cpu")):
        scorer = _Scorer(model)
        assert scorer.fast and scorer.centred_head
        assert scorer._head(torch.zeros(2, model.config.hidden_size)).dtype == torch.float32
    exact, _ = load_causal_lm(str(lm_folder), dtype="fp32", device="cpu")
    with torch.inference_mode(), precision.precision_context(exact, torch.device("cpu")):
        assert not _Scorer(exact).centred_head  # fp32 stays the exact reference


def test_scoring_token_budget_defaults_by_device(tokenizer):  # noqa: F811
    from llm_embedder.lm.likelihood import default_token_budget
    from tests.test_reward import tiny_lm

    assert default_token_budget("cpu") == 1024
    assert default_token_budget("cuda:1") == 8192
    assert RewardScorer(tiny_lm(tokenizer), tokenizer, task="qa").token_budget == 1024
    assert RewardScorer(tiny_lm(tokenizer), tokenizer, task="qa", token_budget=300).token_budget == 300
