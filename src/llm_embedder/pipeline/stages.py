"""Stage bookkeeping: a stage that finished with the same inputs is skipped; one that did not is redone/resumed.

Each finished stage leaves ``state/<stage>.json`` holding the fingerprint of its inputs. Long stages (scoring,
training) also resume internally from their own partial outputs, so a killed pipeline restarted with the same
command continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_embedder.utils.files import write_json


class StageTracker:
    """Runs named stages once per input fingerprint and reports what it did."""

    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.timings: dict[str, float] = {}

    def _marker(self, stage: str) -> Path:
        return self.state_dir / f"{stage.replace('/', '__')}.json"

    def is_done(self, stage: str, fingerprint: str) -> bool:
        marker = self._marker(stage)
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == fingerprint
        except (json.JSONDecodeError, OSError):
            return False

    def run(self, stage: str, fingerprint: str, func: Callable[[], Any]) -> Any:
        """Call ``func`` unless ``stage`` already finished with ``fingerprint``; returns its result or the saved one."""
        marker = self._marker(stage)
        if self.is_done(stage, fingerprint):
            self.log(f"[skip] {stage} (already complete)")
            return json.loads(marker.read_text()).get("result")
        self.log(f"[run]  {stage}")
        start = time.perf_counter()
        result = func()
        elapsed = time.perf_counter() - start
        self.timings[stage] = elapsed
        write_json(marker, {"fingerprint": fingerprint, "seconds": round(elapsed, 2), "result": result})
        self.log(f"[done] {stage} in {elapsed:.1f}s")
        return result

    def seconds(self) -> dict[str, float]:
        """Seconds each stage took (from the markers, so skipped stages report their original cost)."""
        out = {}
        for marker in sorted(self.state_dir.glob("*.json")):
            try:
                out[marker.stem.replace("__", "/")] = float(json.loads(marker.read_text()).get("seconds", 0.0))
            except (json.JSONDecodeError, OSError, ValueError):
                continue
        return out
