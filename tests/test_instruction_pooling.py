"""``pool_instructions: false``: the instruction's tokens stay out of the pooled vector, in training and after."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import build_tiny_model, make_records, write_jsonl

from llm_embedder.errors import UserError
from llm_embedder.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_model_trained_without_pooled_instructions_encodes_the_text_tokens_only(tmp_path):
    from sentence_transformers import SentenceTransformer

    from llm_embedder import LLMEmbedder
    from llm_embedder.training import train

    model = build_tiny_model(tmp_path / "tiny", dropout=0.0)
    data = {"qa": write_jsonl(tmp_path / "qa.jsonl", make_records(16, seed=1))}
    out = train(
        {
            "model": model,
            "data": data,
            "output": str(tmp_path / "out"),
            "steps": 2,
            "batch_size": 4,
            "group_size": 3,
            "lr": 1e-3,
            "query_max_length": 48,
            "key_max_length": 48,
            "save_steps": 2,
            "num_workers": 0,
            "device": "cpu",
            "pool_instructions": False,
        }
    )
    st = SentenceTransformer(out, device="cpu")
    assert st[1].include_prompt is False
    embedder = LLMEmbedder(out, device="cpu")
    instruction = embedder.instruction("qa", "query")
    assert instruction
    got = embedder.encode_queries(["alpha beta gamma"], task="qa")[0]
    # by hand: the transformer on instruction + text, mean over the text's tokens only
    features = st.preprocess([instruction + "alpha beta gamma"])
    n_prompt = len(st.tokenizer(instruction)["input_ids"]) - 1  # without the trailing [SEP]
    with torch.no_grad():
        tokens = st[0](dict(features))["token_embeddings"][0]
    mask = features["attention_mask"][0].bool().clone()
    mask[:n_prompt] = False
    expected = tokens[mask].mean(dim=0)
    expected = (expected / expected.norm()).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # and it differs from pooling the instruction too
    st[1].include_prompt = True
    pooled = st.encode([instruction + "alpha beta gamma"], normalize_embeddings=True)[0]
    assert float(np.abs(pooled - got).max()) > 1e-3
    assert "pooling: the text's tokens only" in (tmp_path / "out" / "README.md").read_text()


def test_the_collator_passes_the_instruction_length_to_the_pooling(tmp_path):
    from sentence_transformers import SentenceTransformer

    from llm_embedder.training.collator import GroupCollator

    st = SentenceTransformer(build_tiny_model(tmp_path / "tiny"), device="cpu")
    rows = make_records(2, seed=3, candidates=2)
    collator = GroupCollator(
        st.preprocess,
        instruction=lambda task, side: "Represent this query: " if side == "query" else "",
        task_names=["qa"],
        query_max_length=32,
        key_max_length=32,
    )
    batch = collator(
        [
            {
                "dataset": "qa",
                "task": "qa",
                "query": r["query"],
                "keys": r["pos"] + r["neg"],
                "teacher_scores": None,
                "id": str(i),
            }
            for i, r in enumerate(rows)
        ]
    )
    assert int(batch["query_prompt_length"]) == len(st.tokenizer("Represent this query: ")["input_ids"]) - 1
    assert "key_prompt_length" not in batch


def test_mixed_batches_cannot_leave_the_instruction_out():
    config = TrainConfig.from_dict(
        {"data": ["qa=x.jsonl"], "output": "o", "mixed_batches": True, "pool_instructions": False}
    )
    with pytest.raises(UserError, match=r"^pool_instructions: false needs homogeneous batches"):
        config.validate()
