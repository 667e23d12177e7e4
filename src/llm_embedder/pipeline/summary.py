"""The pipeline's final table and plot: every retriever (BM25, base encoder, full recipe, ablations) x every task.

Per task two columns: the task table's main retrieval metric (when the dev data has relevance labels) and the
main downstream (LLM) metric of its scenario - the paper's Tables 1-4 in miniature.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llm_embedder.pipeline.config import PipelineConfig
from llm_embedder.tasks.registry import TASKS
from llm_embedder.utils.files import atomic_write, write_json


def summary_columns(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """``(task, metric, lower_is_better)`` columns: main retrieval metric, then main downstream metric."""
    columns = []
    for task, result in results.items():
        spec = TASKS.get(task)
        computed = {m for row in result["results"].values() for m, v in row.items() if v is not None}
        lower = set(result.get("lower_is_better") or [])
        retrieval = next((m for m in [spec.evaluation.main_metric, *spec.evaluation.metrics] if m in computed), None)
        if retrieval:
            columns.append((task, retrieval, retrieval in lower))
        downstream = result.get("main_metric")
        if downstream and downstream != retrieval and downstream in computed:
            columns.append((task, downstream, downstream in lower))
    return columns


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}"


def render_summary(results: dict[str, dict[str, Any]], columns: list[tuple[str, str, bool]]) -> str:
    rows = []
    for result in results.values():
        for name in result["retrievers"]:
            if name not in rows:
                rows.append(name)
    head = "| retriever | " + " | ".join(f"{t} {m} {'↓' if low else '↑'}" for t, m, low in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for name in rows:
        cells = []
        for task, metric, lower in columns:
            row = results[task]["results"].get(name, {})
            value = row.get(metric)
            values = [r.get(metric) for r in results[task]["results"].values() if r.get(metric) is not None]
            best = (min(values) if lower else max(values)) if values else None
            cell = _fmt(value)
            cells.append(f"**{cell}**" if value is not None and value == best else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(results: dict[str, dict[str, Any]], columns: list[tuple[str, str, bool]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(name for r in results.values() for name in r["retrievers"]))
    n = len(columns)
    cols = min(4, max(1, n))
    nrows = math.ceil(n / cols) if n else 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, (task, metric, lower) in zip(axes.flat, columns, strict=False):
        values = [results[task]["results"].get(name, {}).get(metric) for name in rows]
        shown = [(name, v) for name, v in zip(rows, values, strict=True) if v is not None]
        ax.bar([s[0] for s in shown], [s[1] for s in shown], color=[f"C{rows.index(s[0])}" for s in shown])
        ax.set_title(f"{task}: {metric} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def _paired_note(results: dict[str, dict[str, Any]]) -> str:
    """Where the paired differences are: a 0.01 gap in the table may be noise on a small dev set."""
    tasks = [task for task, r in results.items() if r.get("paired")]
    if not tasks:
        return ""
    files = ", ".join(f"eval/{task}.md" for task in tasks)
    return f"Paired differences against the baselines (bootstrap CI, randomization-test p): {files}.\n\n"


def write_summary(
    config: PipelineConfig, results: dict[str, dict[str, Any]], seconds: dict[str, float], root: Path
) -> dict[str, Any]:
    """Write summary.md / summary.json / summary.png in the run folder and print the table."""
    columns = summary_columns(results)
    table = render_summary(results, columns)
    records = {task: r.get("n_records") for task, r in results.items()}
    text = (
        f"# {config.name}: before/after training\n\n"
        f"Base encoder `{config.encoder}`, LLM `{config.lm}`, {config.train['steps']} steps x {config.train['batch_size']} "
        f"queries x group {config.train['group_size']}. Dev records per task: {records}.\n\n{table}\n"
        + _paired_note(results)
        + "Stage times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + "\n"
    )
    with atomic_write(root / "summary.md") as handle:
        handle.write(text)
    # the per-query values stay in eval/<task>.json: the summary is the overview
    overview = {task: {k: v for k, v in r.items() if k != "per_query"} for task, r in results.items()}
    summary = {"columns": [list(c) for c in columns], "results": overview, "seconds": seconds}
    write_json(root / "summary.json", summary)
    plot_summary(results, columns, root / "summary.png")
    print(table)
    return summary
