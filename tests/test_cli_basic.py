"""The command line: --help everywhere, `tasks`, `encode`, and bad input as one line with exit code 2."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest

from llm_embedder.cli import main as cli
from llm_embedder.errors import EXIT_USER_ERROR
from llm_embedder.tasks.registry import TASKS


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


COMMANDS = _command_paths(cli.build_parser())


def test_encode_and_tasks_are_registered():
    assert ("encode",) in COMMANDS and ("tasks",) in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_works_for_every_command(path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*path, "--help"])
    assert info.value.code == 0
    assert "usage: llm-embedder " + " ".join(path) in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == EXIT_USER_ERROR
    assert "usage: llm-embedder" in capsys.readouterr().out


@pytest.fixture
def restore_tasks():
    """`--tasks FILE` registers into the process-wide table; put it back afterwards."""
    saved = dict(TASKS._specs)
    yield
    TASKS._specs.clear()
    TASKS._specs.update(saved)


def test_tasks_command(capsys, tmp_path, restore_tasks):
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("qa", "convsearch", "chat", "lrlm", "icl", "tool"):
        assert f"{name}: " in out
    assert "'Represent this query for retrieving relevant documents: '" in out
    assert "Instructions apply only to models trained with them" in out

    extra = tmp_path / "tasks.yaml"
    extra.write_text("code:\n  query_instruction: 'Find code for: '\n  key_instruction: 'Code: '\n", encoding="utf-8")
    assert cli.main(["tasks", "--json", "--tasks", str(extra)]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["code"]["key_instruction"] == "Code: " and len(table) == 7


def test_tasks_command_bad_file_is_one_line(capsys, tmp_path):
    broken = tmp_path / "tasks.yaml"
    broken.write_text("code:\n  query_instruction: 'q'\n", encoding="utf-8")
    assert cli.main(["tasks", "--tasks", str(broken)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("llm-embedder tasks: error: ") and err.count("\n") == 1
    assert "needs a string 'key_instruction'" in err


# ---------------------------------------------------------------------- encode: bad input
GOOD = '{"query": "q", "pos": ["p"], "neg": ["n"]}\n'
BAD_INPUTS = {
    "malformed": (GOOD + '{"query": \n', [], r"malformed.jsonl:2: malformed JSON"),
    "missing_query": (GOOD + '{"pos": ["p"]}\n', [], "missing_query.jsonl:2: field 'query': missing"),
    "teacher_scores": (
        GOOD + '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [1.0]}\n',
        [],
        "teacher_scores.jsonl:2: field 'teacher_scores': has 1 scores but the record has 2 candidates",
    ),
    "record_task": (GOOD + '{"query": "q", "task": "nope"}\n', [], "record_task.jsonl:2: field 'task': unknown task"),
    "unknown_task": (GOOD, ["--task", "nope"], "unknown task 'nope'"),
    "non_utf8": (GOOD.encode() + b'{"query": "caf\xe9"}\n', [], "non_utf8.jsonl:2: not valid UTF-8"),
    "empty": ("", [], "empty.jsonl: file is empty"),
    "key_template": (
        '{"title": "t", "text": "x"}\n{"text": "y"}\n',
        ["--side", "key"],
        "key_template.jsonl:2: field 'title' needed by template '{title} {text}' is missing",
    ),
    "field": (GOOD + '{"query": "q", "text": 3}\n', ["--field", "text"], "field.jsonl:1: field 'text': missing"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_encode_bad_input_is_one_line_and_exit_2(name, tmp_path, capsys):
    content, extra, expected = BAD_INPUTS[name]
    path = tmp_path / f"{name}.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    args = ["encode", str(path), "-o", str(tmp_path / "out.npy"), "--task", "qa", *extra]
    # (--task given twice: argparse keeps the last one)
    assert cli.main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("llm-embedder encode: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "out.npy").exists()


def test_encode_missing_file_and_bad_max_length(tmp_path, capsys):
    assert cli.main(["encode", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.npy"), "--task", "qa"]) == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err


def test_encode_hub_id_offline_is_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fake_snapshot_download(repo_id, *, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} not cached")
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "q.jsonl"
    path.write_text(GOOD, encoding="utf-8")
    args = ["encode", str(path), "-o", str(tmp_path / "o.npy"), "--task", "qa", "--model", "BAAI/llm-embedder"]
    assert cli.main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'BAAI/llm-embedder' is not in the local Hugging Face cache" in err


# ---------------------------------------------------------------------- encode: results
def test_encode_queries_of_a_record_file(data_dir, tmp_path, capsys, embedder):
    from llm_embedder import load_records

    source = data_dir / "toy" / "tool.jsonl"
    out = tmp_path / "queries.npy"
    assert cli.main(["encode", str(source), "-o", str(out), "--task", "tool", "--device", "cpu"]) == 0
    assert "wrote 8 x 384 float32" in capsys.readouterr().out
    vectors = np.load(out)
    queries = [r.query for r in load_records(source)]
    assert vectors.dtype == np.float32 and vectors.shape == (8, 384)
    np.testing.assert_allclose(vectors, embedder.encode_queries(queries, task="tool"), atol=1e-5)


@pytest.fixture
def fake_embedder(embedder, monkeypatch):
    """Reuse the session encoder (no second model load) and record how the CLI built it."""
    import llm_embedder.model.embedder as module

    calls: list[dict] = []

    def build(model=None, use_instructions=None, **kwargs):
        calls.append({"model": model, **kwargs})
        if use_instructions is None:
            return embedder
        forced = copy.copy(embedder)  # same network, the instruction switch the CLI asked for
        forced.use_instructions = use_instructions
        return forced

    monkeypatch.setattr(module, "LLMEmbedder", build)
    return calls


def test_encode_keys_of_corpus_rows(tmp_path, capsys, embedder, fake_embedder):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"title": "Paris", "text": "capital of France"}, {"title": "Rome", "text": "capital of Italy"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "keys.npy"
    args = ["encode", str(corpus), "-o", str(out), "--task", "qa", "--side", "key", "--batch-size", "4"]
    assert cli.main([*args, "--max-length", "32", "--dtype", "fp32", "--backend", "torch"]) == 0
    assert fake_embedder[0] == {"model": None, "device": None, "dtype": "fp32", "backend": "torch", "batch_size": 4}
    expected = embedder.encode_keys(["Paris capital of France", "Rome capital of Italy"], task="qa", max_length=32)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    # a custom key template picks other fields
    assert cli.main([*args, "--key-template", "{text}"]) == 0
    expected = embedder.encode_keys(["capital of France", "capital of Italy"], task="qa")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_encode_text_file(tmp_path, embedder, fake_embedder):
    texts = tmp_path / "texts.txt"
    texts.write_text("first line\n\nsecond line\r\n", encoding="utf-8")
    out = tmp_path / "t.npy"
    assert cli.main(["encode", str(texts), "-o", str(out), "--task", "chat", "--side", "key"]) == 0
    expected = embedder.encode_keys(["first line", "second line"], task="chat")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert cli.main(["encode", str(empty), "-o", str(out), "--task", "chat"]) == EXIT_USER_ERROR


def test_encode_with_a_custom_task_file(tmp_path, embedder, fake_embedder, restore_tasks):
    extra = tmp_path / "tasks.yaml"
    extra.write_text("code:\n  query_instruction: 'Find code for: '\n  key_instruction: 'Code: '\n", encoding="utf-8")
    source = tmp_path / "q.jsonl"
    source.write_text('{"query": "sort a list", "task": "code"}\n', encoding="utf-8")
    out = tmp_path / "q.npy"
    args = ["encode", str(source), "-o", str(out), "--task", "code", "--tasks", str(extra)]
    assert cli.main([*args, "--instructions", "on"]) == 0
    expected = embedder.model.encode(["Find code for: sort a list"], normalize_embeddings=True)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    # the untrained default encodes the plain text unless told otherwise
    assert cli.main(args) == 0
    plain = embedder.model.encode(["sort a list"], normalize_embeddings=True)
    np.testing.assert_allclose(np.load(out), plain, atol=1e-6)


# ---------------------------------------------------------------------------------------------- issue 12 (Also)
def test_help_does_not_import_torch():
    """``llm-embedder --help`` (and each ``<cmd> --help``) used to import torch: seconds before any output.

    Heavy libraries are imported by the commands that use them, when they run; the parser of every command is
    built here (``build_parser`` registers them all) and torch, transformers and the tqdm bars stay out.
    """
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from llm_embedder.cli.main import build_parser\n"
        "parser = build_parser()\n"
        "for command in parser._subparsers._group_actions[0].choices.values():\n"
        "    command.format_help()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'tqdm', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_progress_is_sparse_when_not_a_terminal(monkeypatch):
    """Progress written to a log file: first and last state only (a redraw at most every 30 s), not one line per
    update; on a terminal tqdm's own redraw rate; LLM_EMBEDDER_PROGRESS=off hides it."""
    import io

    from llm_embedder.utils.progress import LOG_INTERVAL_SECONDS, progress

    monkeypatch.delenv("LLM_EMBEDDER_PROGRESS", raising=False)
    log = io.StringIO()
    for _ in progress(range(2000), file=log, desc="work"):
        pass
    updates = [part for part in log.getvalue().split("\r") if part.strip()]
    assert len(updates) == 2 and "0/2000" in updates[0] and "2000/2000" in updates[-1]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress(range(3), file=Terminal()).mininterval == 0.1
    assert progress(range(3), file=io.StringIO()).mininterval == LOG_INTERVAL_SECONDS
    # bars drawn inside other libraries (sentence-transformers' encode) cannot be slowed down: off in logs
    from llm_embedder.utils.progress import redraws_freely

    assert redraws_freely(Terminal()) and not redraws_freely(io.StringIO())
    monkeypatch.setenv("LLM_EMBEDDER_PROGRESS", "tty")
    assert redraws_freely(io.StringIO())
    monkeypatch.setenv("LLM_EMBEDDER_PROGRESS", "off")
    assert not redraws_freely(Terminal())
    log = io.StringIO()
    for _ in progress(range(10), file=log):
        pass
    assert log.getvalue() == ""


def test_the_library_never_imports_the_command_line():
    """Argument parsing lives in ``cli/`` only: builders and every other library module take typed arguments and
    never import ``argparse`` or ``llm_embedder.cli`` (the command line calls the library, never the reverse)."""
    import ast
    from pathlib import Path

    import llm_embedder

    package = Path(llm_embedder.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(package)}: {name}"
                for name in names
                if name == "argparse" or name == "llm_embedder.cli" or name.startswith("llm_embedder.cli.")
            ]
    assert offenders == []


def test_model_does_not_import_lm():
    """``lm/`` builds on ``model/`` (hub resolution); the shared cache folder lives in ``utils.cache``, so ``model/``
    needs nothing from ``lm/`` and the two never import each other."""
    import ast
    from pathlib import Path

    import llm_embedder.model

    folder = Path(llm_embedder.model.__file__).parent
    imported = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert sorted(m for m in imported if m == "llm_embedder.lm" or m.startswith("llm_embedder.lm.")) == []

    from llm_embedder.lm.loading import cache_dir as lm_cache_dir
    from llm_embedder.model.onnx_backend import onnx_cache_dir
    from llm_embedder.utils.cache import cache_dir

    assert lm_cache_dir is cache_dir and onnx_cache_dir() == cache_dir() / "onnx"
