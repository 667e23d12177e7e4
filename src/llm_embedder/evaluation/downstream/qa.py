"""Knowledge scenario (qa): does the LLM answer better with the retrieved passages in its prompt?

Two views of answer quality, as in the paper's PopQA/MMLU evaluation and the reward definition:
- ``answer_logprob``: mean log-probability per token of the gold answer (best over the record's answers) - smooth,
  needs no generation;
- ``exact_match`` / ``contains_answer``: a short greedy generation compared with the answers after SQuAD
  normalisation (lowercase, no punctuation, no articles, single spaces); ``contains_answer`` is PopQA's accuracy.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch

from llm_embedder.data.records import Record
from llm_embedder.evaluation.downstream.base import (
    DownstreamEvaluator,
    DownstreamScores,
    LanguageModel,
    RetrievedKey,
    require_answers,
)
from llm_embedder.evaluation.downstream.scoring import build_scoring_request, score
from llm_embedder.lm.precision import precision_context
from llm_embedder.utils.progress import progress

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def contains_answer(prediction: str, answers: Sequence[str]) -> bool:
    pred = f" {normalize_answer(prediction)} "
    return any(norm and f" {norm} " in pred for norm in (normalize_answer(a) for a in answers))


def first_line(text: str) -> str:
    """The generated answer up to its first line break (small LMs keep talking)."""
    text = text.strip()
    return text.split("\n", 1)[0].strip()


class QAEvaluator(DownstreamEvaluator):
    """Answer quality with the top-k passages in the task's prompt (its reward template, e.g. ``Knowledge: ...``)."""

    name: ClassVar[str] = "qa"
    metrics: ClassVar[tuple[str, ...]] = ("contains_answer", "exact_match", "answer_logprob")
    per_record_metrics: ClassVar[frozenset[str]] = frozenset(metrics)

    def check_records(self, records: Sequence[Record]) -> None:
        require_answers(records, "qa")

    def score_records(
        self, records: Sequence[Record], retrieved: Sequence[Sequence[RetrievedKey]], lm: LanguageModel | None
    ) -> DownstreamScores:
        assert lm is not None
        budget = self.settings.max_prompt_tokens
        requests, owner = [], []
        prompts: list[list[int]] = []
        for i, (record, keys) in enumerate(zip(records, retrieved, strict=True)):
            # the keys are fitted once per record (they do not depend on the answer)
            prompt = self.render(lm.tokenizer, record, keys)
            for answer in record.answers or []:
                if answer.strip():
                    requests.append(build_scoring_request(lm, replace(prompt, answer=answer.strip()), budget=budget))
                    owner.append(i)
            # generation starts from exactly the context tokens that were scored
            prompts.append(list(requests[-1].context_ids))
        sum_lp, n_tok = score(lm, requests, self.settings, desc="qa answer likelihood")
        best = np.full(len(records), -np.inf)
        for i, lp, n in zip(owner, sum_lp, n_tok, strict=True):
            best[i] = max(best[i], float(lp) / max(int(n), 1))
        outputs = generate_greedy(
            lm,
            prompts,
            self.settings.max_new_tokens,
            self.settings.generation_batch_size,
            show_progress=self.settings.show_progress,
        )
        em = [exact_match(first_line(o), r.answers or []) for o, r in zip(outputs, records, strict=True)]
        hit = [contains_answer(first_line(o), r.answers or []) for o, r in zip(outputs, records, strict=True)]
        per_record = {
            "exact_match": [float(x) for x in em],
            "contains_answer": [float(x) for x in hit],
            "answer_logprob": [float(x) for x in best],
        }
        return DownstreamScores({m: float(np.mean(v)) for m, v in per_record.items()}, per_record)


def generate_greedy(
    lm: LanguageModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, *, show_progress: bool
) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding (prompts sorted by length)."""
    model, tokenizer = lm.model, lm.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in progress(batches, desc="qa generation", unit="batch", disable=not show_progress, leave=False):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = list(prompts[i])
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        with torch.inference_mode(), precision_context(model, device):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        for row, i in enumerate(batch):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return outputs
