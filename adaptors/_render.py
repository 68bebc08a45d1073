"""Rendering an agent's structured events as readable output: helpers the adaptors share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParseState", "block", "event_of", "one_line", "plain", "sub", "tool_call"]


@dataclass
class ParseState:
    """What a structured adaptor's parser keeps between lines."""

    session_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def event_of(line: bytes) -> dict[str, Any] | None:
    """The JSON object on `line`, or None if it is not one (a warning, a blank line)."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def sub(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`obj[key]` when it is a JSON object, else {} (events are untrusted input)."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def plain(line: bytes) -> list[str]:
    """A line that is not an event, rendered as itself (blank lines dropped)."""
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    return [text + "\n"] if text.strip() else []


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def block(prefix: str, text: str, *, max_lines: int = 8, max_chars: int = 1200) -> str:
    """`prefix` + the first lines of `text` (continuations indented), truncation noted."""
    lines = text.rstrip("\n").splitlines() or [""]
    shown = lines[:max_lines]
    body = "\n  ".join(shown)
    if len(body) > max_chars:
        body = body[: max_chars - 1] + "…"
    more = len(lines) - len(shown)
    tail = f"\n  … ({more} more lines)" if more > 0 else ""
    return f"{prefix} {body}{tail}\n"


_PRIMARY_KEYS = ("command", "cmd", "file_path", "filePath", "path", "absolute_path", "pattern",
                 "url", "query", "prompt", "description")


def tool_call(name: str, arguments: Any) -> str:
    """A one-line summary of a tool call: `[tool] Bash: ls -la`."""
    summary = ""
    if isinstance(arguments, str):
        summary = arguments
    elif isinstance(arguments, Mapping):
        for key in _PRIMARY_KEYS:
            value = arguments.get(key)
            if isinstance(value, str) and value:
                summary = value
                break
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                summary = " ".join(value)
                break
        else:
            if arguments:
                summary = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    return f"[tool] {name}: {one_line(summary)}\n" if summary else f"[tool] {name}\n"
