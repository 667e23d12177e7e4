"""From a record to the (context, answer) token pairs whose likelihood is the LLM reward (method.md section 3).

What is built comes from the task table (``TaskSpec.reward``), never from the task's name:

* ``kind: template`` - the prompt is ``reward.template`` filled with the candidate as ``{key}``, the record's
  ``{query}`` and an ``{answer}``; the context is everything before ``{answer}``, the target is the answer
  (so ``Knowledge: {key}\\n\\nQuestion: {query}\\n\\nAnswer: {answer}`` gives the context ``... Answer:`` and the
  target ``Paris``). Key, query and answer are stripped of surrounding whitespace, as the reference does for
  qa; the built-in records carry none, so this changes nothing elsewhere. Text after ``{answer}`` in a user's
  template is not scored (the answer is the last thing the LLM produces). The filling is
  :func:`~llm_embedder.prompts.render.render_prompt` with one key - the rendering evaluation and serving use too.
* ``kind: lrlm`` - token level: the candidate chunk's tokens, then the query chunk's tokens, then the answer
  (the chunk that follows) as the target. No separator: the chunks are consecutive pieces of one text.
* ``kind: none`` - the task has hard labels only; asking for a reward is an error.

Tokenisation: context and answer are tokenised separately (:func:`llm_embedder.lm.likelihood.build_request`),
so the scored tokens are exactly the answer's tokens for every candidate; a space at the seam (``"Answer: "``)
is moved to where the tokenizer puts it, so with SmolLM2 / GPT-2-style tokenizers the ids equal tokenising the
whole filled template (the remaining differences are merges across the seam, e.g. an answer starting with
punctuation; ``tests/test_reward.py`` measures this on the toy data). The lrlm chunks are tokenised one by one
for the same reason.

The key is truncated to ``max_key_tokens`` tokens (reference: 512) keeping its beginning, cut at a token
boundary of the original text. Records with several answers get one request per (candidate, answer); the
scorer averages the per-answer rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_embedder.data.records import Record
from llm_embedder.errors import DataError, UserError
from llm_embedder.lm.likelihood import ScoringRequest, build_request, tokenizer_adds_bos
from llm_embedder.prompts.budget import TokenBudget
from llm_embedder.prompts.render import render_prompt
from llm_embedder.prompts.template import split_template
from llm_embedder.tasks.spec import DEFAULT_MAX_KEY_TOKENS, TaskSpec


@dataclass
class RecordPrompts:
    """The requests of one record: ``requests[c][a]`` for candidate ``c`` and answer ``a``."""

    requests: list[list[ScoringRequest]]

    @property
    def flat(self) -> list[ScoringRequest]:
        return [r for per_candidate in self.requests for r in per_candidate]


class RewardPromptBuilder:
    """Builds the scoring requests of a task's records.

    Args:
        tokenizer: the LLM's tokenizer.
        spec: the task (its ``reward`` section decides everything).
        template: replaces ``spec.reward.template`` (only for ``kind: template`` tasks).
        max_key_tokens: truncate each candidate to this many tokens (``None``: no limit).
        max_length: longest allowed context + answer in tokens (the LM's context window); longer is a DataError.
        add_bos: prepend BOS; ``None`` follows the tokenizer (see ``lm.likelihood``).
    """

    def __init__(
        self,
        tokenizer: Any,
        spec: TaskSpec,
        *,
        template: str | None = None,
        max_key_tokens: int | None = DEFAULT_MAX_KEY_TOKENS,
        max_length: int | None = None,
        add_bos: bool | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.kind = spec.reward.kind
        if self.kind == "none":
            raise UserError(
                f"task {spec.name!r} has no LLM reward (reward.kind: none - the paper trains it on hard labels only)",
                hint="train it with its pos/neg labels, or give the task a reward template in a --tasks file",
            )
        if template is not None and self.kind != "template":
            raise UserError(
                f"--template does not apply to task {spec.name!r} (reward.kind: {self.kind}, token-level chunks)"
            )
        self.template = template if template is not None else spec.reward.template
        self.prefix = ""
        if self.kind == "template":
            if not self.template:
                raise UserError(f"task {spec.name!r} has no reward template", hint="pass --template")
            self.prefix, _ = split_template(self.template)
        if max_key_tokens is not None and max_key_tokens < 1:
            raise UserError(f"--max-key-tokens must be positive, got {max_key_tokens}")
        self.max_key_tokens = max_key_tokens
        self.max_length = max_length
        self.add_bos = tokenizer_adds_bos(tokenizer) if add_bos is None else add_bos
        self.budget = TokenBudget(tokenizer)

    # ------------------------------------------------------------------------------------------------ helpers
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate_key(self, key: str) -> str:
        """``key`` cut to ``max_key_tokens`` tokens (its beginning), at a token boundary of the original text."""
        if self.max_key_tokens is None:
            return key
        return self.budget.truncate(key, self.max_key_tokens, "start")

    def _fail(self, record: Record, message: str, field: str, hint: str | None = None) -> DataError:
        path, lineno = _where(record)
        return DataError(path, lineno, message, field=field, hint=hint)

    # --------------------------------------------------------------------------------------------------- main
    def build(self, record: Record) -> RecordPrompts:
        """The record's requests; bad records raise a DataError naming file:line and field."""
        check_record(record, self.spec)
        candidates = record.candidates
        answers = record.answers or []
        if self.kind == "lrlm":
            requests = self._lrlm(record, candidates, answers)
        else:
            requests = self._template(record, candidates, answers)
        self._check_lengths(record, requests, candidates)
        return RecordPrompts(requests)

    def _template(self, record: Record, candidates: list[str], answers: list[str]) -> list[list[ScoringRequest]]:
        fields = {k: v for k, v in record.extra.items() if isinstance(v, (str, int, float))}
        out = []
        for candidate in candidates:
            prompt = render_prompt(
                self.spec,
                record.query,
                [candidate],
                tokenizer=self.tokenizer,
                max_key_tokens=self.max_key_tokens,
                fields=fields,
                template=self.template,
                where=record.source or "",
            )
            out.append(
                [
                    build_request(self.tokenizer, prompt.context, answer.strip(), add_bos=self.add_bos)
                    for answer in answers
                ]
            )
        return out

    def _lrlm(self, record: Record, candidates: list[str], answers: list[str]) -> list[list[ScoringRequest]]:
        bos = [self.tokenizer.bos_token_id] if self.add_bos and self.tokenizer.bos_token_id is not None else []
        query_ids = self._ids(record.query)
        answer_ids = [self._ids(a) for a in answers]
        out = []
        for candidate in candidates:
            key_ids = self._ids(candidate)
            if self.max_key_tokens is not None:
                key_ids = key_ids[: self.max_key_tokens]
            context = bos + key_ids + query_ids
            out.append([ScoringRequest(list(context), list(ids)) for ids in answer_ids])
        return out

    def _check_lengths(self, record: Record, requests: list[list[ScoringRequest]], candidates: list[str]) -> None:
        for c, per_candidate in enumerate(requests):
            for a, request in enumerate(per_candidate):
                if not request.target_ids:
                    raise self._fail(record, f"answer {a} has no tokens", "answers")
                if self.max_length is None or len(request) <= self.max_length:
                    continue
                key_tokens = len(self._ids(candidates[c]))
                if self.max_key_tokens is not None:
                    key_tokens = min(key_tokens, self.max_key_tokens)
                parts = {
                    _candidate_field(record, c): key_tokens,
                    "query": len(self._ids(record.query)),
                    "answers": len(request.target_ids),
                }
                longest = max(parts, key=lambda name: parts[name])
                sizes = ", ".join(f"{name} {n}" for name, n in parts.items())
                raise self._fail(
                    record,
                    f"prompt of candidate {c} is {len(request)} tokens, longer than the LM's context "
                    f"({self.max_length}; {sizes} tokens)",
                    longest,
                    "shorten it, lower --max-key-tokens, or pass --skip-invalid to skip such records",
                )


def _candidate_field(record: Record, index: int) -> str:
    if record.uses_history:
        return "history"
    return "pos" if index < len(record.pos) else "neg"


def check_record(record: Record, spec: TaskSpec) -> None:
    """Structural checks that need no tokenizer: the task has a reward, there are candidates and answers.

    Cheap enough to run over a whole file before an LLM is loaded, so a long job does not die at hour five.
    """
    path, lineno = _where(record)
    if spec.reward.kind == "none":
        raise DataError(
            path,
            lineno,
            f"task {spec.name!r} has no LLM reward (reward.kind: none - hard labels only)",
            field="task",
            hint="score only tasks with a reward (qa, convsearch, chat, lrlm, icl)",
        )
    if not record.candidates:
        field = "history" if record.history is not None and not record.pos and not record.neg else "pos"
        raise DataError(path, lineno, "no candidates to score (pos, neg and history are empty)", field=field)
    answers = record.answers
    if not answers:
        raise DataError(
            path,
            lineno,
            "missing" if answers is None else "is an empty list",
            field="answers",
            hint=f"task {spec.name!r} scores how likely the LLM makes the expected answer; add 'answers'",
        )
    for i, answer in enumerate(answers):
        if not answer.strip():
            raise DataError(path, lineno, f"answer {i} is empty", field="answers")


def _where(record: Record) -> tuple[str, int | None]:
    source = record.source or "<record>"
    path, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return path, int(line)
    return source, None
