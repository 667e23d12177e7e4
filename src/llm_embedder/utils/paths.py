"""Names from recipes that become folder names, and deletions that must stay inside a run folder.

A recipe's variant or task name ends up as ``RUN/models/<name>`` or ``RUN/data/<name>``; a name such as
``../../home/me/model`` or ``/abs/path`` would make a stage write - and, when it retrains, delete - outside the run
folder. Names are therefore held to the rule of task names, and every recursive delete checks where it lands.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from llm_embedder.errors import UserError


def check_name(name: object, *, what: str, where: str) -> str:
    """``name`` if it is a plain name (letters, digits, ``_``, ``-``; not starting with a digit or ``-``)."""
    text = str(name)
    if not isinstance(name, str) or not text.replace("-", "_").isidentifier():
        raise UserError(
            f"{where}: invalid {what} name {name!r}",
            hint="use letters, digits, '_' or '-' (it becomes a folder name inside the run folder)",
        )
    return text


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symbolic links resolved) lies strictly inside ``root``."""
    target, base = Path(path).resolve(), Path(root).resolve()
    return target != base and target.is_relative_to(base)


def remove_tree_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """``shutil.rmtree(path)``, refused unless ``path`` is a real folder strictly inside ``root``."""
    target = Path(path)
    if target.is_symlink() or not is_inside(target, root):
        raise UserError(
            f"refusing to delete {target}: it is not a folder inside the run folder {root}",
            hint="remove it yourself if it really is an old output of this run",
        )
    shutil.rmtree(target)
