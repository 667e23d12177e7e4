"""Helpers of the training tests: a tiny random BERT saved as a sentence-transformers folder, fabricated records."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
    "phi chi psi omega river mountain forest ocean desert city village garden bridge tower"
).split()


def build_tiny_model(folder: Path, *, dropout: float = 0.1, seed: int = 0) -> str:
    """A 2-layer, hidden-32 BERT with the bundled MiniLM tokenizer, mean pooling + normalisation (ST folder)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llm_embedder.model.loading import default_encoder_path

    folder = Path(folder)
    if (folder / "modules.json").is_file():
        return str(folder)
    hf = folder.parent / f"{folder.name}-hf"
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(folder))
    return str(folder)


def make_records(
    n: int,
    *,
    seed: int,
    candidates: int = 6,
    scored: bool = True,
    history: bool = False,
    pos: int = 1,
    task: str | None = None,
) -> list[dict]:
    """Records of random words; teacher scores favour the candidates that share words with the query."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        query = " ".join(rng.choice(WORDS) for _ in range(6))
        keys = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(candidates)]
        keys[0] = query.split()[0] + " " + keys[0]
        row: dict = {"query": query, "query_id": f"q{seed}-{i}"}
        if history:
            row.update(pos=[], neg=[], history=keys)
        else:
            row.update(pos=keys[:pos], neg=keys[pos:])
        if scored:
            row["teacher_scores"] = [round(-rng.random() * 3 - (0 if j == 0 else 1), 4) for j in range(candidates)]
        if task:
            row["task"] = task
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def one_step_recipe(model: str, data: dict[str, str], output: Path, **extra: object) -> dict:
    """The smallest training recipe a test can run: one step of 4 queries x 3 keys, 32-token texts, on the CPU."""
    return {
        "model": model,
        "data": data,
        "output": str(output),
        "steps": 1,
        "batch_size": 4,
        "group_size": 3,
        "query_max_length": 32,
        "key_max_length": 32,
        "num_workers": 0,
        "device": "cpu",
        **extra,
    }
