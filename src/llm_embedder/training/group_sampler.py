"""Group sampling: turn a record's candidates into ``[positive, negative_1, ..., negative_{G-1}]``.

The rules are the task table's (``training.positive`` / ``training.negatives``, the reference's choices):

* positive ``first``: the record's first ``pos``; ``random``: a random ``pos``; ``teacher``: the candidate with the
  highest teacher score (it leaves the negative pool). Records without ``pos`` (chat, lrlm and icl, where the LLM
  reward decides) fall back to the highest teacher score under ``first`` / ``random`` too.
* negatives ``random``: drawn without replacement; ``first``: in file order; ``teacher``: highest teacher score
  first. Too few negatives are repeated as in the reference (``random.sample(neg * n, G - 1)``) unless repeating
  is off, in which case the record is rejected before training starts.
* ``min_score_margin``: a record whose teacher scores span less than the margin carries no ranking signal and is
  dropped (the reference drops such lrlm records at 0.1).

The teacher scores travel in the same order as the sampled keys. Strategies are string enums; a callable may be
passed instead (the escape hatch), e.g. ``GroupSampler(8, positive=lambda view, rng: ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from llm_embedder.data.records import Record


class PositiveRule(StrEnum):
    FIRST = "first"
    RANDOM = "random"
    TEACHER = "teacher"


class NegativeRule(StrEnum):
    RANDOM = "random"
    FIRST = "first"
    TEACHER = "teacher"


@dataclass(frozen=True, slots=True)
class Candidates:
    """What group sampling sees of a record: its candidate keys, how many are positives, their teacher scores."""

    query: str
    keys: tuple[str, ...]
    num_pos: int
    teacher_scores: tuple[float, ...] | None = None
    #: "file:line" of the record, for error messages
    source: str | None = None

    @classmethod
    def from_record(cls, record: Record, *, use_teacher_scores: bool = True) -> Candidates:
        scores = record.teacher_scores if use_teacher_scores else None
        return cls(
            query=record.query,
            keys=tuple(record.candidates),
            num_pos=record.num_pos,
            teacher_scores=None if scores is None else tuple(float(s) for s in scores),
            source=record.source,
        )


@dataclass(frozen=True, slots=True)
class Group:
    """One query with its sampled keys (positive first) and their teacher scores in the same order."""

    query: str
    keys: list[str]
    teacher_scores: list[float] | None


#: escape hatches: positive(candidates, rng) -> index; negatives(pool, candidates, count, rng) -> indices
PositiveFn = Callable[[Candidates, np.random.Generator], int]
NegativeFn = Callable[[Sequence[int], Candidates, int, np.random.Generator], Sequence[int]]


class GroupSampler:
    """Samples fixed-size groups from records, following one task's rules.

    Args:
        group_size: ``G`` keys per query (1 positive + ``G - 1`` negatives).
        positive: a :class:`PositiveRule` name or a callable ``(candidates, rng) -> index``.
        negatives: a :class:`NegativeRule` name or a callable ``(pool, candidates, count, rng) -> indices``.
        repeat: repeat negatives when a record has fewer than ``G - 1`` (the reference's behaviour).
        min_score_margin: drop records whose teacher scores span less than this (0 keeps all).
    """

    def __init__(
        self,
        group_size: int,
        *,
        positive: str | PositiveRule | PositiveFn = PositiveRule.FIRST,
        negatives: str | NegativeRule | NegativeFn = NegativeRule.RANDOM,
        repeat: bool = True,
        min_score_margin: float = 0.0,
    ) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.positive = positive if callable(positive) else PositiveRule(positive)
        self.negatives = negatives if callable(negatives) else NegativeRule(negatives)
        self.repeat = repeat
        self.min_score_margin = float(min_score_margin)

    # ------------------------------------------------------------------ checks before training
    def keeps(self, candidates: Candidates) -> bool:
        """False for records the margin filter drops (teacher scores span less than ``min_score_margin``)."""
        scores = candidates.teacher_scores
        if self.min_score_margin <= 0 or not scores:
            return True
        return max(scores) - min(scores) >= self.min_score_margin

    @property
    def needs_teacher_scores(self) -> bool:
        return self.positive == PositiveRule.TEACHER or self.negatives == NegativeRule.TEACHER

    def problem(self, candidates: Candidates) -> tuple[str, str, str] | None:
        """Why no group can be built from ``candidates``: ``(field, message, hint)``, or ``None`` when fine."""
        if not candidates.keys:
            return "pos", "the record has no candidates (pos, neg and history are empty)", "remove the record"
        if self.needs_teacher_scores and candidates.teacher_scores is None:
            return "teacher_scores", "missing, but this task picks keys by teacher score", "score the file first"
        if not callable(self.positive) and candidates.num_pos == 0 and candidates.teacher_scores is None:
            return (
                "pos",
                "is empty and there are no teacher scores to pick a positive by",
                "score the file (llm-embedder score) or add positives; --hard-labels needs 'pos'",
            )
        needed = self.group_size - 1
        pool = self._pool_size(candidates)
        if needed > 0 and pool == 0:
            return "neg", "no negatives to build a group from", "remove the record or use --group-size 1"
        if needed > pool and not self.repeat:
            return (
                "neg",
                f"has {pool} negative(s), fewer than group size - 1 = {needed}, and repeating is off",
                "lower --group-size or allow repeating",
            )
        return None

    def _pool_size(self, candidates: Candidates) -> int:
        if self.positive == PositiveRule.TEACHER or candidates.num_pos == 0 or callable(self.positive):
            return len(candidates.keys) - 1
        return len(candidates.keys) - candidates.num_pos

    # ------------------------------------------------------------------ sampling
    def choose_positive(self, candidates: Candidates, rng: np.random.Generator) -> tuple[int, list[int]]:
        """Index of the positive and the pool of negative indices."""

        def everything_else(index: int) -> list[int]:
            return [i for i in range(len(candidates.keys)) if i != index]

        if callable(self.positive):
            index = int(self.positive(candidates, rng))
            return index, everything_else(index)
        if self.positive == PositiveRule.TEACHER or candidates.num_pos == 0:
            if candidates.teacher_scores is None:
                raise ValueError(f"{candidates.source}: no positive and no teacher scores")
            index = int(np.argmax(candidates.teacher_scores))
            return index, everything_else(index)
        index = 0 if self.positive == PositiveRule.FIRST else int(rng.integers(candidates.num_pos))
        return index, list(range(candidates.num_pos, len(candidates.keys)))

    def choose_negatives(self, pool: list[int], candidates: Candidates, rng: np.random.Generator) -> list[int]:
        needed = self.group_size - 1
        if needed == 0:
            return []
        if callable(self.negatives):
            return [int(i) for i in self.negatives(pool, candidates, needed, rng)]
        if not pool:
            raise ValueError(f"{candidates.source}: no negatives to sample from")
        if len(pool) < needed and not self.repeat:
            raise ValueError(f"{candidates.source}: {len(pool)} negatives < {needed} and repeating is off")
        if self.negatives == NegativeRule.TEACHER:
            scores = candidates.teacher_scores
            if scores is None:
                raise ValueError(f"{candidates.source}: negatives by teacher score need teacher scores")
            pool = sorted(pool, key=lambda i: -scores[i])  # stable: ties keep file order
        tiled = pool * math.ceil(needed / len(pool))
        if self.negatives == NegativeRule.RANDOM:
            return [tiled[i] for i in rng.choice(len(tiled), size=needed, replace=False)]
        return tiled[:needed]

    def sample(self, candidates: Candidates, rng: np.random.Generator) -> Group:
        """One group: the positive, then ``G - 1`` negatives; teacher scores in the same order."""
        positive, pool = self.choose_positive(candidates, rng)
        chosen = [positive, *self.choose_negatives(pool, candidates, rng)]
        scores = candidates.teacher_scores
        return Group(
            query=candidates.query,
            keys=[candidates.keys[i] for i in chosen],
            teacher_scores=None if scores is None else [scores[i] for i in chosen],
        )
