"""Progress bars that suit both a terminal and a log file.

On a terminal a tqdm bar redraws in place ten times a second. Written to a file (``llm-embedder eval ... 2> log``,
a batch job, CI) every redraw becomes a new segment of the log: thousands of lines per evaluation. So when the
stream is not a terminal the bar is redrawn at most once every :data:`LOG_INTERVAL_SECONDS` (plus the first and
the final state), which keeps a long job's log readable and still shows that it moves. ``LLM_EMBEDDER_PROGRESS``
overrides the choice: ``off`` hides every bar, ``tty`` redraws as on a terminal.

Every progress bar of the library goes through :func:`progress` (tqdm's own arguments pass through unchanged);
bars drawn inside other libraries are switched off in logs (:func:`redraws_freely`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

#: seconds between redraws when the bar goes to a file or a pipe
LOG_INTERVAL_SECONDS = 30.0


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def redraws_freely(stream: IO[str] | None = None) -> bool:
    """Whether a bar on ``stream`` (default stderr) may redraw at tqdm's own rate.

    For bars drawn by other libraries (sentence-transformers' ``encode``), which :func:`progress` cannot slow
    down: they are shown only when this is true.
    """
    mode = os.environ.get("LLM_EMBEDDER_PROGRESS", "").strip().lower()
    if mode in ("off", "tty"):
        return mode == "tty"
    return _is_terminal(stream if stream is not None else sys.stderr)


def progress(iterable: Iterable[Any] | None = None, *, file: IO[str] | None = None, **kwargs: Any) -> Any:
    """A ``tqdm.auto.tqdm`` bar, redrawn sparsely when ``file`` (default stderr) is not a terminal."""
    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    mode = os.environ.get("LLM_EMBEDDER_PROGRESS", "").strip().lower()
    if mode == "off":
        kwargs["disable"] = True
    elif mode != "tty" and not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_SECONDS)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_SECONDS * 4)
    return tqdm(iterable, file=stream, **kwargs)
