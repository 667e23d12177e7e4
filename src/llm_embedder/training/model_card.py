"""The README.md written beside a trained model: what it was trained from, on what, how, and how it ended."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else str(value)


def render_model_card(summary: dict[str, Any]) -> str:
    """Markdown for ``summary`` as built by :func:`llm_embedder.training.trainer.train`."""
    cfg = summary["config"]
    first_task = summary["datasets"][0]["task"]
    datasets = _table(
        ["dataset", "task", "file", "records", "dropped (margin)", "weight", "steps / epoch", "loss"],
        [
            [
                d["name"],
                d["task"],
                f"`{d['path']}`",
                d["records"],
                d["dropped"],
                _fmt(d["weight"]),
                d["steps_per_epoch"],
                d["loss"],
            ]
            for d in summary["datasets"]
        ],
    )
    losses = _table(
        ["dataset", "mean loss, first steps", "mean loss, last steps", "steps"],
        [
            [name, _fmt(v["first"]), _fmt(v["last"]), v["steps"]]
            for name, v in summary.get("dataset_losses", {}).items()
        ],
    )
    metrics = summary["metrics"]
    switches = [
        f"instructions: {'on' if cfg['use_instructions'] else 'OFF (w/o instruction ablation)'}",
        f"batches: {'MIXED across datasets (w/o homogeneous ablation)' if cfg['mixed_batches'] else 'homogeneous (one dataset per step)'}",
        f"teacher scores: {'IGNORED (hard labels, w/o LLM reward ablation)' if cfg['hard_labels'] else 'used'}",
    ]
    if cfg.get("in_batch_duplicates") == "mask":
        switches.append("in-batch negatives: without duplicates of the query's own keys and labelled positives")
    if cfg.get("pool_instructions") is False:
        switches.append("pooling: the text's tokens only (the instruction is left out of the vector)")
    task_weights = cfg.get("anchor_task_weights") or {}
    if cfg.get("anchor_weight") or any(task_weights.values()):
        per_task = "".join(f", {task} {weight:g}" for task, weight in task_weights.items())
        switches.append(
            f"anchor to the base model's plain-text similarities: weight {cfg['anchor_weight']:g}{per_task}, "
            f"temperature {cfg['anchor_temperature']:g}"
        )
    key_budgets = "".join(f", {task} {tokens}" for task, tokens in (cfg.get("task_key_max_length") or {}).items())
    if cfg.get("distillation"):
        switches.append(f"distillation forced to: {cfg['distillation']}")
    if cfg.get("loss_overrides"):
        switches.append(f"loss overrides: {cfg['loss_overrides']}")
    if cfg.get("tasks_file"):
        switches.append(f"task definitions: the built-in table changed by `{cfg['tasks_file']}` (saved with the model)")
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- llm-embedder
- retrieval-augmented-generation
base_model: {summary["base_model"]}
---

# LLM-Embedder fine-tuned from `{summary["base_model"]}`

One bi-encoder for every retrieval need of an LLM (knowledge, memory, long context, in-context examples, tools),
trained as in *Retrieve Anything To Augment Large Language Models* (Zhang et al., arXiv 2310.07554) with the
`llm-embedder` toolkit: multi-task instruction fine-tuning, LLM-reward distillation, homogeneous in-batch negatives.

## Use

```python
from llm_embedder import LLMEmbedder

model = LLMEmbedder("path/to/this/folder")
q = model.encode_queries(["..."], task="{first_task}")
k = model.encode_keys(["..."], task="{first_task}")
```

Plain sentence-transformers works too; the task instructions are saved as prompts (`<task>_query`, `<task>_key`):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder")
q = model.encode(["..."], prompt_name="{first_task}_query", normalize_embeddings=True)
```

Plain sentence-transformers cuts every long input from the right, at the model's length. Tasks with
`query_truncation: left` or `query_max_tokens` in the task table (the built-in convsearch: the last 48 tokens of
a conversation that ends with the question) get their queries cut that way only through `LLMEmbedder`, so pass
such queries through `LLMEmbedder` or shorten them yourself.

## Training data

{datasets}

## Training

- base model: `{summary["base_model"]}`
- steps: {metrics["steps"]} x {cfg["batch_size"]} queries per process x {summary["world_size"]} process(es)
  = {summary["global_batch_size"]} queries per step, group size {cfg["group_size"]}
  ({summary["global_batch_size"] * cfg["group_size"]} keys per step; InfoNCE sees all of them)
- optimiser: AdamW, lr {cfg["lr"]:g}, weight decay {cfg["weight_decay"]:g}, linear schedule with warm-up {cfg["warmup"]:g},
  max grad norm {cfg["max_grad_norm"]:g}, seed {cfg["seed"]}
- precision: {cfg["dtype"]}; gradient cache chunk: {cfg["grad_cache_chunk"] or "off"};
  max length query {cfg["query_max_length"]} / key {cfg["key_max_length"]}{key_budgets} tokens in training (the saved model encodes with
  {"the same budgets" if cfg.get("inference_max_length") == "training" else "the base encoder's own max length"});
  student temperature {cfg["temperature"]:g} (a task whose `training.temperature` differs has it in its loss above)
- {"; ".join(switches)}

## Results of the run

- final training loss (mean over the run): {_fmt(metrics.get("training_loss"))}
- last logged loss: {_fmt(metrics.get("last_loss"))}
- runtime: {_fmt(metrics.get("runtime_s"))} s, {_fmt(metrics.get("queries_per_second"))} queries/s

Loss per dataset (as seen by process 0, first vs last tenth of its steps):

{losses}

## Recipe

The full recipe is in `training_config.json` (`llm-embedder train --config training_config.json` reruns it).
"""
