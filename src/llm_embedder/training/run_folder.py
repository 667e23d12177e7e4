"""The output folder of a training run: what it holds, and publishing the final model in one atomic step.

While a run trains, ``OUT`` holds ``checkpoints/`` (with ``training_config.json``) and maybe the batch logs; once it
has finished, ``OUT`` is the trained model, and ``llm_embedder.json`` (the task table) plus
``training_summary.json`` say so. Why the care:

* a kill while the final model is written must not leave a folder that loads as a model without its task table,
  and a kill while the checkpoints are removed must not leave a half-deleted checkpoint that a later ``--resume``
  takes for complete. So the model is written into a staging folder beside ``OUT`` (``.OUT.saving``), and published
  by two renames in the same parent folder: ``OUT`` -> ``.OUT.old`` (the finished run's checkpoints go with it),
  ``.OUT.saving`` -> ``OUT``; only then is ``.OUT.old`` deleted. A later run finishes or undoes an interrupted
  publish (:func:`recover`) before it looks at ``OUT``.
* ``-o`` pointing at a folder of the user's (notes, another model) must not be overwritten: a non-empty folder that
  is neither a model nor a training run of ours is refused (:func:`check_output`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from llm_embedder.errors import UserError
from llm_embedder.model.embedder import CONFIG_NAME

CHECKPOINTS = "checkpoints"
CONFIG_FILE = "training_config.json"
#: written last into the staging folder: its presence means the save completed
SUMMARY_FILE = "training_summary.json"


def _absolute(out: Path) -> Path:
    # ``-o .`` has no name and no parent to rename in; its absolute path has both
    return Path(os.path.abspath(out))


def staging_folder(out: Path) -> Path:
    """Where the final model is written before it is published (beside ``out``, so a rename publishes it)."""
    out = _absolute(out)
    return out.parent / f".{out.name}.saving"


def retired_folder(out: Path) -> Path:
    """Where the run folder goes when the model replaces it; deleted afterwards (its checkpoints with it)."""
    out = _absolute(out)
    return out.parent / f".{out.name}.old"


def is_finished(folder: Path) -> bool:
    """A folder holding the finished model of a training run (task table and summary both written)."""
    return (folder / CONFIG_NAME).is_file() and (folder / SUMMARY_FILE).is_file()


def is_training_run(folder: Path) -> bool:
    """A folder a training run of ours created (its recipe is in ``checkpoints/``)."""
    return (folder / CHECKPOINTS / CONFIG_FILE).is_file()


def recover(out: Path) -> None:
    """Finish or undo a publish that a kill interrupted, so ``out`` is again either a run folder or the model."""
    out = _absolute(out)
    staging, retired = staging_folder(out), retired_folder(out)
    if staging.is_dir() and is_finished(staging):
        # the model is complete: finish the publish wherever the kill stopped it
        if out.exists():
            if retired.exists():
                shutil.rmtree(retired)  # a stale leftover: `out` was not moved aside yet
            out.rename(retired)
        staging.rename(out)
    elif staging.exists():
        shutil.rmtree(staging)  # killed while the model was written: the checkpoints in `out` are intact
    if retired.exists():
        if out.exists():
            shutil.rmtree(retired)  # killed while the old run folder was deleted
        else:
            retired.rename(out)  # cannot happen after a staging folder was complete, but never lose a run


def wait_for_recovery(out: Path, *, timeout_s: float = 600.0) -> None:
    """The other processes of a distributed run: wait while process 0 runs :func:`recover` (renames, deletes)."""
    deadline = time.monotonic() + timeout_s
    while staging_folder(out).exists() or retired_folder(out).exists():
        if time.monotonic() > deadline:
            raise UserError(
                f"{staging_folder(out)} or {retired_folder(out)} is still there after {timeout_s:.0f} s",
                hint="run once with a single process (without --nproc) to finish the interrupted save",
            )
        time.sleep(0.2)


def check_output(out: Path) -> None:
    """Refuse an existing, non-empty ``out`` that is neither a model nor a training run folder of ours, and the
    current folder (or one above it): publishing replaces the folder, which would leave the shell in a deleted one."""
    if not out.exists():
        return
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise UserError(
            f"output folder {out} is the current folder or contains it",
            hint="the finished model replaces the output folder; pass a subfolder, e.g. -o model",
        )
    if not out.is_dir():
        raise UserError(f"output {out} is a file, not a folder", hint="choose another output folder (-o)")
    if (out / CONFIG_NAME).is_file() or is_training_run(out):
        return
    if any(out.iterdir()):
        raise UserError(
            f"output folder {out} is not empty and holds no training run or model of llm-embedder",
            hint="choose a new or empty folder (-o); nothing in it was changed",
        )


def publish(out: Path, *, keep_checkpoints: bool) -> None:
    """Make the complete staging folder ``out`` (see the module docstring).

    What else the run folder holds (the batch logs; the checkpoints with ``keep_checkpoints``) moves into the
    staging folder first, unless the model has a file of that name; the staging folder already counts as complete,
    so :func:`recover` finishes the publish after a kill.
    """
    staging = staging_folder(out)
    if not is_finished(staging):
        raise RuntimeError(f"{staging} is not complete; refusing to publish it")
    if out.is_dir():
        for item in list(out.iterdir()):
            if (item.name == CHECKPOINTS and not keep_checkpoints) or (staging / item.name).exists():
                continue
            os.replace(item, staging / item.name)
    recover(out)
