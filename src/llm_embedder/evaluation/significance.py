"""Paired significance of the difference between two retrievers scored on the same queries.

Why: our dev sets have 40-300 queries, where a difference of 0.01-0.02 in nDCG@10 between two retrievers is often
noise. Both retrievers are scored on the same queries, so the comparison rests on the per-query differences
``d_i = a_i - b_i`` (retriever minus baseline) of the queries with a value for both:

- ``diff``: the mean difference ``mean(d)`` (= the difference of the two means on these queries);
- ``ci_low`` / ``ci_high``: a 95% paired bootstrap confidence interval of ``mean(d)`` (queries resampled with
  replacement, percentile interval, :func:`scipy.stats.bootstrap` with ``paired=True``);
- ``p``: a two-sided paired randomization test (Fisher's sign flip, :func:`scipy.stats.permutation_test` with
  ``permutation_type="samples"``). Under the null hypothesis the two retrievers are exchangeable on each query, so
  every ``d_i`` is as likely to carry either sign; ``p`` is the share of the ``2**n`` sign patterns whose mean is at
  least as far from 0 as the observed one. Exact (all patterns) for up to :data:`EXACT_MAX_QUERIES` queries, so
  small sets are deterministic; otherwise :data:`RESAMPLES` random patterns (the p-value then never reaches 0).
  Smucker, Allan and Carterette (CIKM 2007, "A comparison of statistical significance tests for information
  retrieval evaluation") recommend this test for IR metrics.

Both are seeded (the evaluation's ``seed``), afresh for every pair, so a pair's numbers do not depend on which other
retrievers were in the run. Degenerate cases: all differences zero -> ``p = 1`` and the interval ``[0, 0]``; fewer
than :data:`MIN_QUERIES` paired queries -> no test (``ci_low``, ``ci_high`` and ``p`` are None).

>>> r = paired_difference([1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0])
>>> r.diff, r.p, r.n  # five wins out of five: 2 of the 32 sign patterns are as extreme - not significant at 0.05
(1.0, 0.0625, 5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm_embedder.errors import UserError

#: retrievers compared against by default, when present: the lexical baseline and the encoder before training
DEFAULT_BASELINES = ("bm25", "base")
#: bootstrap resamples and random sign patterns (sign patterns only beyond EXACT_MAX_QUERIES queries)
RESAMPLES = 10_000
#: up to this many paired queries the randomization test enumerates all 2**n sign patterns
EXACT_MAX_QUERIES = 16
#: fewer paired queries than this: no interval and no test
MIN_QUERIES = 2
CONFIDENCE = 0.95
#: the level the report marks (``*``)
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PairedDifference:
    """The comparison of a retriever with a baseline on ``n`` paired queries (see the module docstring)."""

    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES
) -> PairedDifference:
    """Mean of ``a - b``, its paired bootstrap interval and the sign-flip p-value (``a[i]``, ``b[i]``: query i)."""
    from scipy.stats import bootstrap, permutation_test

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values need two equal-length lists, got shapes {x.shape} and {y.shape}")
    n = len(x)
    if n == 0:
        return PairedDifference(None, None, None, None, 0)
    d = x - y
    diff = float(np.mean(d))
    if n < MIN_QUERIES:
        return PairedDifference(diff, None, None, None, n)
    if np.all(d == 0):
        return PairedDifference(0.0, 0.0, 0.0, 1.0, n)
    rng = np.random.default_rng(seed)
    # the percentile interval (not scipy's default BCa): BCa is undefined (NaN) when the differences are all equal
    interval = bootstrap(
        (x, y),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=rng,
    ).confidence_interval
    test = permutation_test(
        (x, y),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=math.inf if n <= EXACT_MAX_QUERIES else resamples,
        alternative="two-sided",
        rng=rng,
    )
    return PairedDifference(diff, float(interval.low), float(interval.high), float(test.pvalue), n)


def pairing_label(metric: str, *, main: str | None, llm_metric: bool = False, lower_is_better: bool = False) -> str:
    """What the pairs are on, for the line above them: the main metric, an LLM metric per record (log-perplexity
    for a pooled perplexity), or the main retrieval metric."""
    if metric == main:
        return f"main metric {metric}"
    if llm_metric:
        return f"{metric}, the LLM's metric per record" + ("; lower is better" if lower_is_better else "")
    return f"{metric}, the main retrieval metric"


def check_baselines(baselines: Sequence[str], retrievers: Sequence[str]) -> None:
    """An unknown baseline name is a one-line error naming the retrievers of the run."""
    for name in baselines:
        if name not in retrievers:
            raise UserError(
                f"unknown baseline {name!r}",
                hint=f"choose one of the evaluated retrievers: {', '.join(retrievers)}",
            )


def compare_to_baselines(
    values: Mapping[str, Mapping[str, float]],
    baselines: Sequence[str],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{retriever: {baseline: PairedDifference JSON}}`` for every retriever against every baseline.

    ``values`` maps each retriever (in display order) to ``{query id: value}``; retrievers without values (``none``)
    take no part, nor do baselines without values. Two baselines are compared once (the later one against the
    earlier one), a retriever never with itself.
    """
    names = list(values)
    chosen = [b for b in baselines if b in values]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        for baseline in chosen:
            if name == baseline or (name in chosen and names.index(name) < names.index(baseline)):
                continue
            shared = [qid for qid in values[baseline] if qid in values[name]]
            result = paired_difference(
                [values[name][q] for q in shared], [values[baseline][q] for q in shared], seed=seed, resamples=resamples
            )
            out.setdefault(name, {})[baseline] = result.to_json()
    return out
