"""``serving`` sits beside ``evaluation`` and ``reward``: it never imports evaluation, pipeline, training or cli."""

from __future__ import annotations

import ast
from pathlib import Path

import llm_embedder.serving

FORBIDDEN = ("llm_embedder.evaluation", "llm_embedder.pipeline", "llm_embedder.training", "llm_embedder.cli")


def test_serving_imports_nothing_above_it():
    folder = Path(llm_embedder.serving.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert found == []
