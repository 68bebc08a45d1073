"""batchctl's output: the error type every command raises, aligned tables, JSON documents.

Nothing here touches the state directory; it only formats what the commands found.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from supervisor.config import Config
from supervisor.state.clock import parse_iso
from supervisor.state.layout import Layout

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "PROG",
    "CtlError",
    "Ctx",
    "age",
    "cell",
    "emit_json",
    "table",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124

#: The prefix of every error message on stderr ("batchctl: no such job: x"), as Unix tools do.
PROG = "batchctl"


class CtlError(Exception):
    """An operator-facing failure: `str()` is the message, `code` the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ctx:
    """What one command runs with: the configuration, its state dir, and where it prints."""

    cfg: Config
    layout: Layout
    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def say(self, line: str = "") -> None:
        """One line of human output on stdout."""
        self.out.write(line + "\n")

    def note(self, line: str) -> None:
        """One line for the operator on stderr (never part of a --json document)."""
        self.err.write(line + "\n")

    def error(self, line: str) -> None:
        """One error line on stderr, prefixed with the program name ("batchctl: ...")."""
        self.err.write(f"{PROG}: {line}\n")

    def emit(self, doc: Any) -> None:
        """The one JSON document of a --json command."""
        emit_json(doc, self.out)

    def write_bytes(self, data: bytes) -> None:
        """Raw bytes to stdout as they are (job output), flushed."""
        self.out.flush()
        buffer = getattr(self.out, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            self.out.write(data.decode(errors="replace"))
            self.out.flush()


def emit_json(doc: Any, out: TextIO | None = None) -> None:
    """Print ONE JSON document (the whole `--json` output of a command): an object
    indented; a listing as an array with one compact record per line (json's C encoder:
    100,000 records print in well under a second, and `grep` still finds a job's line)."""
    stream = sys.stdout if out is None else out
    if isinstance(doc, list):
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        stream.write("[\n" + ",\n".join(dumps(item) for item in doc) + "\n]\n" if doc
                     else "[]\n")
        return
    stream.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def cell(value: Any) -> str:
    """One table cell: '-' for None, 'a,b' for lists, str() otherwise."""
    if type(value) is str:
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Iterable[Sequence[Any]], *, header: Sequence[str] | None = None,
          gap: int = 2) -> list[str]:
    """Rows as compact left-aligned columns (the last column is never padded)."""
    cells = [[cell(v) for v in row] for row in rows]
    if header is not None:
        cells.insert(0, list(header))
    if not cells:
        return []
    ncol = max(len(r) for r in cells)
    widths = [0] * ncol
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in cells:
        parts = [text.ljust(widths[i]) if i < len(row) - 1 else text
                 for i, text in enumerate(row)]
        lines.append((" " * gap).join(parts).rstrip())
    return lines


def age(since: object, now: datetime | None = None) -> str:
    """How long ago `since` (ISO) was, as H:MM:SS (or D days, H:MM:SS); '-' if unknown."""
    t = parse_iso(since)
    if t is None:
        return "-"
    ref = datetime.now(UTC) if now is None else now
    secs = max(0, int(ref.timestamp() - t))
    days, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    clock = f"{h}:{m:02d}:{s:02d}"
    if days:
        return f"{days} day{'s' if days > 1 else ''}, {clock}"
    return clock
