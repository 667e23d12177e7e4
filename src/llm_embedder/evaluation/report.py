"""Rendering evaluation results: a markdown table, the JSON file and a PNG bar chart.

Kept apart from the runner so the numbers can be re-rendered from a saved JSON (``render_markdown(json.load(f))``)
and so that the metric core and orchestration never import matplotlib.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError
from llm_embedder.evaluation.significance import SIGNIFICANCE, pairing_label
from llm_embedder.utils.files import atomic_write, write_json


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def _header(metric: str, lower: Sequence[str]) -> str:
    return f"{metric} {'↓' if metric in lower else '↑'}"


def best_retrievers(results: dict[str, Any], metric: str) -> set[str]:
    """Labels of the retrievers with the best value of ``metric`` (ties all win)."""
    values = {
        name: row.get(metric)
        for name, row in results["results"].items()
        if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])
    }
    if not values:
        return set()
    pick = min if metric in results.get("lower_is_better", []) else max
    best = pick(values.values())
    return {name for name, value in values.items() if value == best}


def render_markdown(results: dict[str, Any], *, digits: int = 4) -> str:
    """Rows = retrievers, columns = metrics; the best value per column in bold; arrows say which way is better."""
    metrics = list(results.get("metrics") or [])
    lower = list(results.get("lower_is_better") or [])
    title = f"task `{results['task']}`: {results['n_records']} records"
    if results.get("downstream"):
        title += f", LLM `{results.get('lm')}`, top-{results['top_k']} keys in the prompt"
        seen = results.get("n_downstream_records")
        if seen is not None and seen != results["n_records"]:
            title += f" (LLM metrics on the first {seen} records)"
    pool = "the corpus" if results.get("pool") == "corpus" else "each record's candidates"
    title += f", retrieval from {pool}"
    lines = [title, ""]
    if not metrics:
        lines.append("(no metric could be computed: no retrieval labels and no downstream scenario)")
        return "\n".join(lines) + "\n"
    lines.append("| retriever | " + " | ".join(_header(m, lower) for m in metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    best = {m: best_retrievers(results, m) for m in metrics}
    for name in results["retrievers"]:
        row = results["results"].get(name, {})
        cells = []
        for metric in metrics:
            text = _fmt(row.get(metric), digits)
            cells.append(f"**{text}**" if name in best[metric] and len(results["retrievers"]) > 1 else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.extend(render_paired(results))
    return "\n".join(lines) + "\n"


def render_paired(results: dict[str, Any], *, digits: int = 3) -> list[str]:
    """Lines below the table: each retriever against each baseline on the paired metric (none without pairs).

    ``full vs base: +0.012 [-0.008, +0.031], p = 0.24 (n = 100)``: mean per-query difference, its 95% bootstrap
    interval, the randomization test's p and the number of paired queries (see :mod:`.significance`).
    """
    paired = results.get("paired") or {}
    if not paired:
        return []
    metric = results.get("paired_metric")
    # results written before "paired_on" existed paired on the main or the main retrieval metric
    what = results.get("paired_on") or pairing_label(metric, main=results.get("main_metric"))
    lines = [
        "",
        f"paired differences ({what}): retriever minus baseline on the queries with a value for both, "
        f"mean [95% bootstrap CI], two-sided randomization test p; * = p < {SIGNIFICANCE}",
        "",
    ]
    for name, against in paired.items():
        for baseline, r in against.items():
            lines.append(f"- {name} vs {baseline}: {_paired_text(r, digits)}")
    return lines


def _paired_text(r: dict[str, Any], digits: int) -> str:
    if r.get("p") is None:
        return f"no test (n = {r['n']} paired {'query' if r['n'] == 1 else 'queries'})"
    p = "p < 0.001" if r["p"] < 0.001 else f"p = {r['p']:.3g}"
    star = " *" if r["p"] < SIGNIFICANCE else ""
    return f"{r['diff']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}], {p} (n = {r['n']}){star}"


def plot_results(results: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """A PNG with one bar subplot per metric comparing the retrievers (values written on the bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(results.get("metrics") or [])
    names = list(results["retrievers"])
    lower = set(results.get("lower_is_better") or [])
    n = max(len(metrics), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, 1.1 * len(names) + 1.5) * cols, 3.6 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for index, ax in enumerate(axes.flat):
        if index >= len(metrics):
            ax.axis("off")
            continue
        metric = metrics[index]
        values = [results["results"].get(name, {}).get(metric) for name in names]
        heights = [v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(names)), heights, color=[colors[i % len(colors)] for i in range(len(names))])
        for bar, value, height in zip(bars, values, heights, strict=True):
            label = "n/a" if value is None else f"{value:.3g}"
            below = height < 0
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, height),
                ha="center",
                va="top" if below else "bottom",
                fontsize=8,
                xytext=(0, -2 if below else 2),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{metric} ({'lower' if metric in lower else 'higher'} is better)", fontsize=10)
        ax.margins(y=0.15)
    fig.suptitle(f"{results['task']}: {results['n_records']} records", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return str(path)


def write_report(
    results: dict[str, Any], out_dir: str | os.PathLike[str], *, stem: str | None = None
) -> dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (stem: the task name) into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file", hint="pass a folder with -o")
    stem = stem or str(results["task"])
    paths = {"json": str(out / f"{stem}.json"), "markdown": str(out / f"{stem}.md"), "png": str(out / f"{stem}.png")}
    write_json(paths["json"], results)
    with atomic_write(paths["markdown"]) as handle:
        handle.write(render_markdown(results))
    plot_results(results, paths["png"])
    return paths


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Results saved by :func:`write_report` (to re-render or compare)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: results file not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a results JSON ({exc.msg} at line {exc.lineno})") from None
