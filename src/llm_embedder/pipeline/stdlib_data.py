"""Demo material every machine has: Python's own standard library.

* tool retrieval: each public function of a set of stdlib modules is a "tool"; its key is the API description
  (``module.function(signature): summary``) and its query is the rest of its docstring with the function's name
  masked - the request a user would write without knowing the API's name.
* long-range LM: the source files of the standard library are long documents for the lrlm builder.

Nothing here downloads anything, and the output is deterministic for a given Python version.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import sysconfig
from pathlib import Path
from typing import Any

#: " at 0x7f8944113..." in the repr of a default value (a function, an object): a memory address
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

#: modules whose functions become tools (broad, well documented, pure-Python docstrings)
TOOL_MODULES = (
    "os",
    "os.path",
    "shutil",
    "json",
    "re",
    "math",
    "statistics",
    "random",
    "string",
    "textwrap",
    "datetime",
    "time",
    "calendar",
    "itertools",
    "functools",
    "operator",
    "collections",
    "heapq",
    "bisect",
    "copy",
    "pathlib",
    "glob",
    "fnmatch",
    "tempfile",
    "gzip",
    "zipfile",
    "tarfile",
    "csv",
    "base64",
    "binascii",
    "hashlib",
    "hmac",
    "secrets",
    "uuid",
    "urllib.parse",
    "html",
    "difflib",
    "unicodedata",
    "locale",
    "subprocess",
    "shlex",
    "socket",
    "email.utils",
    "inspect",
    "dis",
    "ast",
    "tokenize",
    "pprint",
    "reprlib",
    "traceback",
    "warnings",
    "logging",
    "argparse",
    "getpass",
    "platform",
    "sysconfig",
    "zlib",
    "bz2",
    "lzma",
    "struct",
    "codecs",
    "io",
    "pickle",
    "ipaddress",
    "mimetypes",
    "webbrowser",
    "wave",
    "colorsys",
    "fractions",
    "decimal",
    "cmath",
    "contextlib",
    "threading",
    "queue",
    "sched",
    "signal",
    "select",
    "filecmp",
    "stat",
    "linecache",
    "keyword",
    "typing",
)

#: stdlib source files used as long documents for the lrlm demo (train / dev split by file)
LRLM_TRAIN_FILES = ("argparse.py", "configparser.py", "pathlib.py", "dataclasses.py", "statistics.py", "textwrap.py")
LRLM_DEV_FILES = ("shutil.py", "difflib.py")


_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)( -> .*)?$")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def lrlm_files(split: str) -> list[Path]:
    names = LRLM_TRAIN_FILES if split == "train" else LRLM_DEV_FILES
    return [stdlib_dir() / name for name in names if (stdlib_dir() / name).is_file()]


def _tools_of(module_name: str) -> list[dict[str, Any]]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    out = []
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        paragraphs = [p.strip() for p in doc.split("\n\n") if p.strip()]
        # builtins start with a signature line ("get_ident() -> integer"): that is not a description
        while paragraphs and _SIGNATURE_LINE.match(paragraphs[0]):
            paragraphs.pop(0)
        if len(paragraphs) < 2:
            continue
        summary, detail = paragraphs[0], " ".join(paragraphs[1:3])
        if len(summary) < 15 or len(detail.split()) < 8:
            continue
        try:
            # a default value's repr may hold its memory address ("<function copy2 at 0x7f89...>"), which changes
            # from run to run: drop it, so the same Python builds the same records
            signature = _ADDRESS.sub("", str(inspect.signature(obj)))
        except (TypeError, ValueError):
            signature = "(...)"
        masked = re.sub(rf"\b{re.escape(name)}\b", "this function", detail)
        out.append(
            {
                "title": f"{module_name}.{name}",
                "text": f"{module_name}.{name}{signature}: {' '.join(summary.split())}",
                "query": " ".join(masked.split())[:600],
            }
        )
    return out


def build_tool_task(seed: int = 0, dev_fraction: float = 0.25, num_negatives: int = 10) -> dict[str, list[dict]]:
    """Corpus rows and train/dev records for the stdlib tool-retrieval task (negatives: same-module tools first)."""
    tools: list[dict[str, Any]] = []
    seen: set[str] = set()
    for module_name in TOOL_MODULES:
        for tool in _tools_of(module_name):
            if tool["text"] not in seen:
                seen.add(tool["text"])
                tools.append(tool)
    corpus = [{"title": t["title"], "text": t["text"]} for t in tools]
    rng = random.Random(seed)
    order = list(range(len(tools)))
    rng.shuffle(order)
    n_dev = int(len(order) * dev_fraction)
    module_of = [t["title"].rsplit(".", 1)[0] for t in tools]
    records: dict[str, list[dict]] = {"train": [], "dev": []}
    for rank, i in enumerate(order):
        same = [j for j in range(len(tools)) if j != i and module_of[j] == module_of[i]]
        rng.shuffle(same)
        others = rng.sample([j for j in range(len(tools)) if j != i and module_of[j] != module_of[i]], num_negatives)
        neg = (same + others)[:num_negatives]
        split = "dev" if rank < n_dev else "train"
        records[split].append(
            {
                "query": tools[i]["query"],
                "pos": [corpus[i]["text"]],
                "neg": [corpus[j]["text"] for j in neg],
                "pos_index": [i],
                "neg_index": neg,
                "task": "tool",
                "query_id": tools[i]["title"],
            }
        )
    return {"corpus": corpus, **records}
