"""Collate sampled groups into the two model inputs (queries, key groups) plus the labels the losses read.

Texts are tokenised with the model's own ``preprocess`` and the task instructions as the prompt, exactly as
``LLMEmbedder.encode`` does at inference (same prompt, same truncation per side), so training and retrieval see the
same inputs. It runs in the data-loader workers.

Before any tokenizer sees a text, it is cut to :data:`MAX_CHARS_PER_TOKEN` characters per token of the budget (the
start kept, or the end for a task whose queries keep their end): a tokenizer encodes the whole string before it
truncates, so one 50 MB field would cost gigabytes of memory in a worker. The bound is generous (a token of normal
text is 3-6 characters), so inputs of any sane text are unchanged.

Output (sentence-transformers' column convention, read by its trainer):
``query_input_ids``, ``query_attention_mask``, ... / ``key_input_ids``, ... (``n * G`` rows), ``label = {"task": (n,),
"teacher_scores": (n, G), "query_order": (n,), "key_order": (n * G,)}`` (scores only when some item has them; zeros for
the others), ``dataset_name`` (or ``"mixed"``) and ``sample_ids`` (for the batch log). The rows of each column are
sorted by length for cheaper gradient-cache mini-batches; ``*_order`` restores group order (key row ``i * G + j``
is key ``j`` of query ``i``, positive first) - see :func:`sort_by_length`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.functional import pad

Instruction = Callable[[str, str], str]
#: ``(texts, task, side, max_length) -> texts``: the embedder's per-task truncation (``LLMEmbedder.fit_texts``)
FitTexts = Callable[[list[str], str, str, int], list[str]]
#: characters kept per token of the budget before tokenising (see the module docstring)
MAX_CHARS_PER_TOKEN = 64


def cut_characters(text: str, max_length: int, *, keep_end: bool = False) -> str:
    """``text`` cut to ``max_length * MAX_CHARS_PER_TOKEN`` characters, keeping its start (or its end)."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    return text[-limit:] if keep_end else text[:limit]


def text_ids(texts: Iterable[str]) -> torch.Tensor:
    """A stable 64-bit id per text (BLAKE2b of its UTF-8 bytes): equal texts, equal ids, in every process.

    Not Python's ``hash``: it is salted per process, and the ids of data-loader workers and of other ranks are
    compared with each other (:func:`~llm_embedder.training.losses.base.duplicate_keys`).
    """
    ids = [
        int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True) for t in texts
    ]
    return torch.tensor(ids, dtype=torch.int64)


def sort_by_length(features: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Rows sorted longest first, and the index that restores the original order (``sorted[restore]``).

    Gradient caching embeds contiguous mini-batches and trims each one's trailing padding, so neighbours of similar
    length waste little compute; the losses put the rows back in group order before scoring.
    """
    mask = features.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return features, None
    order = torch.argsort(mask.sum(dim=1), descending=True, stable=True)
    rows = mask.shape[0]
    sorted_features = {
        name: value[order] if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows else value
        for name, value in features.items()
    }
    return sorted_features, torch.argsort(order)


class GroupCollator:
    """Args:
    preprocess_fn: the model's ``preprocess(texts, prompt=..., max_length=...)``.
    instruction: ``(task, side) -> text`` prepended to inputs (``""`` when instructions are off).
    task_names: task order of the loss (the label's task ids index it).
    query_max_length / key_max_length: token budgets per side.
    task_key_max_length: per-task key budgets overriding ``key_max_length`` (``{"tool": 256}``); a mixed batch is
        tokenised to the longest budget among its tasks, each key already cut to its own.
    task_query_max_length: the same for queries (the trainer passes each task's ``LLMEmbedder.max_length``, which
        a task's ``query_max_tokens`` lowers, so training cuts a query exactly where retrieval does).
    fit_texts: the per-task truncation of ``LLMEmbedder.fit_texts`` (queries that keep their end), so a
        training input is cut exactly as the same text is at retrieval time; ``None``: the tokenizer's cut only.
    tail_tasks: tasks whose queries keep their end (``query_truncation: left``): their over-long queries lose
        characters at the start, not the end, before tokenising.
    duplicates: also write ``label["key_ids"]`` (the keys' text ids, group order) and ``label["own_ids"]`` (each
        query's own keys and labelled positives, ``(n, M)``, padded with its first key): the losses then take an
        in-batch key with the same text as one of the query's own for no negative (``in_batch_duplicates: mask``).
    anchor: also write the same texts WITHOUT instructions as two more columns, ``anchor_query_*`` and
        ``anchor_key_*`` (label ``anchor_query_order`` / ``anchor_key_order``), for the frozen base model of
        :class:`~llm_embedder.training.losses.anchor.AnchoredLoss`. They are cut exactly as the instructed texts
        (the per-task fit leaves room for the instruction, so a plain text may lose up to an instruction's
        length more than the base alone would cut).
    """

    def __init__(
        self,
        preprocess_fn: Callable[..., dict[str, Any]],
        *,
        instruction: Instruction,
        task_names: Sequence[str],
        query_max_length: int,
        key_max_length: int,
        task_key_max_length: Mapping[str, int] | None = None,
        task_query_max_length: Mapping[str, int] | None = None,
        fit_texts: FitTexts | None = None,
        tail_tasks: Collection[str] = (),
        duplicates: bool = False,
        anchor: bool = False,
    ) -> None:
        self.duplicates = duplicates
        self.anchor = anchor
        self.preprocess_fn = preprocess_fn
        self.tail_tasks = frozenset(tail_tasks)
        self.fit_texts = fit_texts
        self.instruction = instruction
        self.task_names = list(task_names)
        self.query_max_length = query_max_length
        self.key_max_length = key_max_length
        self.task_key_max_length = dict(task_key_max_length or {})
        self.task_query_max_length = dict(task_query_max_length or {})

    def budget(self, task: str, side: str) -> int:
        """The token budget of one task's texts on one side."""
        if side == "query":
            return self.task_query_max_length.get(task, self.query_max_length)
        return self.task_key_max_length.get(task, self.key_max_length)

    def _fit(self, texts: list[str], tasks: list[str], side: str) -> list[str]:
        if self.fit_texts is None:
            return texts
        out = list(texts)
        for task in dict.fromkeys(tasks):
            rows = [i for i, t in enumerate(tasks) if t == task]
            fitted = self.fit_texts([texts[i] for i in rows], task, side, self.budget(task, side))
            for i, text in zip(rows, fitted, strict=True):
                out[i] = text
        return out

    def _cut(self, texts: list[str], tasks: list[str], side: str) -> list[str]:
        texts = [
            cut_characters(text, self.budget(task, side), keep_end=side == "query" and task in self.tail_tasks)
            for text, task in zip(texts, tasks, strict=True)
        ]
        return self._fit(texts, tasks, side)

    def _tokenise(self, texts: list[str], tasks: list[str], side: str, prompt: str | None = None) -> dict[str, Any]:
        """``preprocess_fn`` with each text cut to its task's budget: one call per distinct budget (a mixed batch
        under ``task_key_max_length``), padded to one width and put back in input order."""
        budgets = [self.budget(task, side) for task in tasks]
        if len(set(budgets)) == 1:
            extra = {"prompt": prompt} if prompt else {}
            return self.preprocess_fn(texts, max_length=budgets[0], **extra)
        parts: list[dict[str, Any]] = []
        rows: list[int] = []
        for budget in sorted(set(budgets)):
            idx = [i for i, b in enumerate(budgets) if b == budget]
            parts.append(self.preprocess_fn([texts[i] for i in idx], max_length=budget))
            rows += idx
        width = max(int(part["input_ids"].shape[1]) for part in parts)
        restore = torch.argsort(torch.tensor(rows))
        merged: dict[str, Any] = {}
        for name, first in parts[0].items():
            if isinstance(first, torch.Tensor):  # (rows, tokens): pad to one width, 0 = masked out
                merged[name] = torch.cat([pad(part[name], (0, width - part[name].shape[1])) for part in parts])[restore]
            else:  # batch-level entries ("modality": "text") are the same for every part
                merged[name] = first
        return merged

    def _encode(self, texts: list[str], tasks: list[str], side: str) -> dict[str, Any]:
        if len(set(tasks)) == 1:
            return self._tokenise(texts, tasks, side, prompt=self.instruction(tasks[0], side) or None)
        # mixed batches: one prompt per text (identical for pooling that includes the prompt tokens)
        texts = [self.instruction(task, side) + text for task, text in zip(tasks, texts, strict=True)]
        return self._tokenise(texts, tasks, side)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        group_sizes = {len(item["keys"]) for item in items}
        if len(group_sizes) != 1:
            raise ValueError(f"items of one batch have different group sizes: {sorted(group_sizes)}")
        tasks = [item["task"] for item in items]
        batch: dict[str, Any] = {}
        key_tasks = [task for item, task in zip(items, tasks, strict=True) for _ in item["keys"]]
        query_texts = self._cut([item["query"] for item in items], tasks, "query")
        key_texts = self._cut([key for item in items for key in item["keys"]], key_tasks, "key")
        columns = [
            ("query", self._encode(query_texts, tasks, "query")),
            ("key", self._encode(key_texts, key_tasks, "key")),
        ]
        if self.anchor:
            columns += [
                ("anchor_query", self._tokenise(query_texts, tasks, "query")),
                ("anchor_key", self._tokenise(key_texts, key_tasks, "key")),
            ]
        label: dict[str, torch.Tensor] = {"task": torch.tensor([self.task_names.index(t) for t in tasks])}
        for prefix, features in columns:
            features, restore = sort_by_length(features)
            if restore is not None:
                label[f"{prefix}_order"] = restore
            for name, value in features.items():
                batch[f"{prefix}_{name}"] = value
        if self.duplicates:
            label["key_ids"] = text_ids(key for item in items for key in item["keys"])
            own = [list(dict.fromkeys([*item["keys"], *item.get("positives", ())])) for item in items]
            width = max(len(texts) for texts in own)
            label["own_ids"] = torch.stack([text_ids(texts + texts[:1] * (width - len(texts))) for texts in own])
        if any(item["teacher_scores"] is not None for item in items):
            size = group_sizes.pop()
            label["teacher_scores"] = torch.tensor(
                [item["teacher_scores"] or [0.0] * size for item in items], dtype=torch.float32
            )
        batch["label"] = label
        names = {item["dataset"] for item in items}
        batch["dataset_name"] = names.pop() if len(names) == 1 else "mixed"
        batch["sample_ids"] = [item["id"] for item in items]
        return batch
