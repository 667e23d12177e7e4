"""``llm-embedder build chat``: memory-retrieval records from users' own dialogues.

Input: one dialogue per line (JSON lines, ``.gz`` accepted), in any of these shapes:

- Multi-Session Chat (ParlAI ``msc``):
  ``{"dialog": [{"text": ...}, ...], "previous_dialogs": [{"dialog": [...]}, ...]}``
- generic: ``{"turns": ["hi", "hello", ...]}`` or ``{"turns": [{"speaker": "a", "text": "hi"}, ...]}``, optionally
  with earlier sessions: ``{"sessions": [[...turns...], [...], ...]}`` (the last session is the current one)
- a bare list of turns: ``[{"speaker": "a", "text": "hi"}, ...]`` (``role``/``content`` keys work too, so chat
  logs in the OpenAI message format can be used as they are)

Turns alternate between two speakers by position (consecutive turns of the same named speaker are merged
first). A record is one (Speaker-1 utterance -> Speaker-2 reply) pair of the current session: ``query`` = the
utterance, ``answers`` = [the reply], ``history`` = the memory the retriever chooses from: the earlier sessions'
turns paired as ``"Speaker 1: a\\nSpeaker 2: b"`` (a session's trailing unanswered turn on its own), then the
earlier pairs of the current session (method.md section 2; the shared MSC data has exactly this layout).
``pos``/``neg`` stay empty: the LLM reward (``llm-embedder score``) decides which memory turn helps.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_embedder.data.jsonl import iter_json_lines as read_json_lines
from llm_embedder.data.records import Record, write_records
from llm_embedder.errors import DataError, UserError

_SPEAKER_KEYS = ("speaker", "role", "id", "name", "author")
_TEXT_KEYS = ("text", "content", "utterance", "message")
FORMATS = ("auto", "msc", "turns", "list")


def _clean(text: str) -> str:
    return " ".join(text.split())


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line; unlike records, a line may hold a JSON list."""
    yield from read_json_lines(path, objects=False, what="dialogues")


def _turn_text(turn: Any, where: tuple[str, int, str]) -> tuple[str | None, str]:
    path, lineno, field = where
    if isinstance(turn, str):
        return None, turn
    if isinstance(turn, dict):
        text = next((turn[k] for k in _TEXT_KEYS if k in turn), None)
        if not isinstance(text, str):
            raise DataError(path, lineno, f"a turn has no text ({'/'.join(_TEXT_KEYS)})", field=field)
        speaker = next((turn[k] for k in _SPEAKER_KEYS if k in turn), None)
        return (None if speaker is None else str(speaker)), text
    raise DataError(path, lineno, f"a turn must be a string or an object, got {type(turn).__name__}", field=field)


def session_turns(turns: Any, where: tuple[str, int, str], *, merge_speakers: bool = True) -> list[str]:
    """The cleaned texts of one session; consecutive turns of the same named speaker are joined."""
    path, lineno, field = where
    if not isinstance(turns, list):
        raise DataError(path, lineno, "must be a list of turns", field=field)
    out: list[str] = []
    last_speaker: str | None = None
    for turn in turns:
        speaker, text = _turn_text(turn, where)
        text = _clean(text)
        if merge_speakers and speaker is not None and speaker == last_speaker and out:
            out[-1] = f"{out[-1]} {text}".strip()
        else:
            out.append(text)
        last_speaker = speaker
    return out


def dialogue_sessions(value: Any, path: str, lineno: int, fmt: str = "auto") -> list[list[str]]:
    """All sessions of one dialogue, oldest first; the last is the current session."""
    if fmt == "auto":
        if isinstance(value, list):
            fmt = "list"
        elif isinstance(value, dict) and "dialog" in value:
            fmt = "msc"
        elif isinstance(value, dict) and ("turns" in value or "sessions" in value):
            fmt = "turns"
        else:
            raise DataError(
                path,
                lineno,
                "unrecognised dialogue",
                hint="expected 'dialog' (MSC), 'turns', 'sessions' or a list of turns",
            )
    if fmt == "list":
        return [session_turns(value, (path, lineno, "turns"))]
    if not isinstance(value, dict):
        raise DataError(path, lineno, f"expected a JSON object for --format {fmt}")
    if fmt == "msc":
        # MSC speakers alternate by position; its 'id' fields are "Speaker 1"/"Speaker 2" labels, not names.
        previous = value.get("previous_dialogs") or []
        if not isinstance(previous, list):
            raise DataError(path, lineno, "must be a list", field="previous_dialogs")
        sessions = []
        for i, session in enumerate(previous):
            field = f"previous_dialogs[{i}].dialog"
            if not isinstance(session, dict):
                raise DataError(path, lineno, "must be an object", field=f"previous_dialogs[{i}]")
            sessions.append(session_turns(session.get("dialog"), (path, lineno, field), merge_speakers=False))
        sessions.append(session_turns(value.get("dialog"), (path, lineno, "dialog"), merge_speakers=False))
        return sessions
    if "sessions" in value:
        sessions = value["sessions"]
        if not isinstance(sessions, list) or not sessions:
            raise DataError(path, lineno, "must be a non-empty list of sessions", field="sessions")
        return [session_turns(s, (path, lineno, f"sessions[{i}]")) for i, s in enumerate(sessions)]
    return [session_turns(value.get("turns"), (path, lineno, "turns"))]


def pair_turns(turns: list[str]) -> list[tuple[str, str]]:
    """(Speaker 1, Speaker 2) pairs by position; a trailing unanswered turn is dropped."""
    return [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]


def memory_item(pair: tuple[str, str]) -> str:
    return f"Speaker 1: {pair[0]}\nSpeaker 2: {pair[1]}"


def session_memory(turns: list[str]) -> list[str]:
    """Memory items of a finished session: its pairs, plus a trailing unanswered turn on its own (as in MSC data)."""
    items = [memory_item(p) for p in pair_turns(turns)]
    if len(turns) % 2:
        items.append(f"Speaker 1: {turns[-1]}")
    return items


def chat_records(
    sessions: list[list[str]],
    dialogue_id: str,
    *,
    pairs_per_dialogue: int = 0,
    min_history: int = 1,
    rng: random.Random | None = None,
    task: str = "chat",
) -> list[Record]:
    """Records of one dialogue: every (or ``pairs_per_dialogue`` random) current-session pair with enough memory."""
    earlier = [item for session in sessions[:-1] for item in session_memory(session)]
    current = pair_turns(sessions[-1]) if sessions else []
    eligible = [i for i in range(len(current)) if len(earlier) + i >= min_history]
    if pairs_per_dialogue > 0 and len(eligible) > pairs_per_dialogue:
        eligible = sorted((rng or random.Random(0)).sample(eligible, pairs_per_dialogue))
    out = []
    for i in eligible:
        query, reply = current[i]
        out.append(
            Record(
                query=query,
                pos=[],
                neg=[],
                answers=[reply],
                history=earlier + [memory_item(p) for p in current[:i]],
                task=task,
                query_id=f"{dialogue_id}-{i}",
            )
        )
    return out


def build_chat(
    inputs: list[str],
    output: str,
    *,
    fmt: str = "auto",
    pairs_per_dialogue: int = 0,
    min_history: int = 1,
    seed: int = 0,
    id_prefix: str | None = None,
    task: str = "chat",
) -> int:
    """Read dialogues from ``inputs`` and atomically write chat records to ``output``; returns the record count."""
    if fmt not in FORMATS:
        raise UserError(f"unknown dialogue format {fmt!r}", hint=f"choose {', '.join(FORMATS)}")
    rng = random.Random(seed)
    records: list[Record] = []
    for path in inputs:
        prefix = id_prefix if id_prefix is not None else f"{Path(path).name.split('.')[0]}-"
        for index, (lineno, value) in enumerate(iter_json_lines(path)):
            sessions = dialogue_sessions(value, str(path), lineno, fmt)
            given = value.get("id") if isinstance(value, dict) and isinstance(value.get("id"), (str, int)) else None
            dialogue_id = str(given) if given is not None else f"{prefix}{index}"
            records.extend(
                chat_records(
                    sessions,
                    dialogue_id,
                    pairs_per_dialogue=pairs_per_dialogue,
                    min_history=min_history,
                    rng=rng,
                    task=task,
                )
            )
    if not records:
        raise UserError(
            "no records: no dialogue has a Speaker-1/Speaker-2 pair with enough history",
            hint="check the format, or lower --min-history",
        )
    return write_records(output, records)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "chat",
        help="chat (memory) records from dialogues: MSC, {'turns': [...]} or lists of turns",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="DIALOGUES", help="JSON-lines files, one dialogue per line")
    parser.add_argument("-o", "--output", required=True, help="records file to write (JSON lines)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="auto", help="input format (default: detect)")
    parser.add_argument(
        "--pairs-per-dialogue", type=int, default=0, help="random pairs kept per dialogue (0 = all, the default)"
    )
    parser.add_argument("--min-history", type=int, default=1, help="skip pairs with fewer memory items (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sampling")
    parser.add_argument("--id-prefix", default=None, help="query_id prefix (default: the input file's name + '-')")
    parser.add_argument("--task", default="chat", help="task name written into the records (default chat)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    count = build_chat(
        args.inputs,
        args.output,
        fmt=args.fmt,
        pairs_per_dialogue=args.pairs_per_dialogue,
        min_history=args.min_history,
        seed=args.seed,
        id_prefix=args.id_prefix,
        task=args.task,
    )
    print(f"wrote {count} chat records to {args.output}")
    return 0
