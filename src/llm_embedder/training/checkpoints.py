"""Where a run resumes from: the latest COMPLETE checkpoint.

The trainer writes a checkpoint's files one after the other (model, sampler state, optimizer, scheduler, RNG) and
``trainer_state.json`` last, so a process killed mid-save leaves a folder without it; such a folder is skipped. A
folder that a kill left half-DELETED (the trainer rotating old checkpoints) may keep ``trainer_state.json`` and lose
the weights, so the files a resume loads are required too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llm_embedder.errors import UserError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
#: besides TRAINER_STATE, what a resume cannot do without: the optimizer and one of the weight files
REQUIRED = ("optimizer.pt",)
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SAMPLER_STATE = "sampler_state.json"
#: ``[[step, dataset, loss], ...]`` of the steps so far, so a resumed run reports the mean over the whole run
LOSS_HISTORY = "loss_history.json"


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def is_complete(checkpoint: Path) -> bool:
    """All the files a resume reads are there."""
    return (
        (checkpoint / TRAINER_STATE).is_file()
        and all((checkpoint / name).is_file() for name in REQUIRED)
        and any((checkpoint / name).is_file() for name in WEIGHTS)
    )


def latest_checkpoint(folder: str | Path) -> Path | None:
    checkpoints = complete_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def resume_point(folder: str | Path, *, resume: bool) -> Path | None:
    """The checkpoint to resume from (``resume``), or None for a fresh run; refuses to mix runs silently."""
    latest = latest_checkpoint(folder)
    if resume:
        return latest
    if latest is not None:
        raise UserError(
            f"{folder} holds checkpoints of an earlier run (latest: {latest.name})",
            hint="pass --resume to continue it, or choose another output folder",
        )
    return None


def read_sampler_state(checkpoint: Path) -> dict[str, Any] | None:
    file = checkpoint / SAMPLER_STATE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{file}: unreadable batch-sampler state ({exc})", hint="resume from an earlier checkpoint"
        ) from None


def read_loss_history(checkpoint: Path) -> list[list[Any]]:
    """The step losses saved with ``checkpoint`` (empty for a checkpoint written before they were saved)."""
    file = checkpoint / LOSS_HISTORY
    if not file.is_file():
        return []
    try:
        history = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: unreadable loss history ({exc})", hint="resume from an earlier checkpoint") from None
    if not isinstance(history, list):
        raise UserError(f"{file}: unreadable loss history (not a list)", hint="resume from an earlier checkpoint")
    return history
