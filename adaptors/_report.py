"""What an agent said about its own run (its error, usage, session): the type and helpers
(the long form: docs/AGENTS.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANSI",
    "Report",
    "first_line",
    "number",
    "since",
    "usage",
]

#: ANSI escape sequences (colours, cursor moves) some CLIs print even into a pipe.
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

_LIMIT = 300


@dataclass(frozen=True)
class Report:
    """An agent's own account of its run (see the module docstring)."""

    error: str | None = None
    usage: dict[str, Any] | None = None
    totals: dict[str, Any] | None = None
    session_id: str | None = None


def first_line(text: object, limit: int = _LIMIT) -> str | None:
    """The first non-blank line of `text`, ANSI codes removed, stripped and cut to `limit`
    characters; None when there is none."""
    if not isinstance(text, str):
        return None
    for raw in ANSI.sub("", text).splitlines():
        line = raw.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return None


def number(value: object) -> int | float | None:
    """`value` when it is a non-negative number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return value


def usage(input_tokens: object = None, output_tokens: object = None, cost_usd: object = None,
          turns: object = None) -> dict[str, Any] | None:
    """A usage object (the four keys; non-numbers become None); None if all are None."""
    cost = number(cost_usd)
    out: dict[str, Any] = {
        "input_tokens": _int(input_tokens),
        "output_tokens": _int(output_tokens),
        "cost_usd": None if cost is None else round(float(cost), 10),
        "turns": _int(turns),
    }
    return None if all(v is None for v in out.values()) else out


def _int(value: object) -> int | None:
    got = number(value)
    return None if got is None else int(got)


def since(total: object, base: Mapping[str, Any] | None, key: str,
          resumed: bool) -> int | float | None:
    """This run's share of a figure the CLI reports cumulatively over a session: `total`
    minus what the resumed job's result recorded (`base[key]`). A first run (not resumed)
    is the whole total; a resumed run whose base is unknown (its result is gone) or larger
    than the total is None: unknown, never a double count."""
    now = number(total)
    if now is None:
        return None
    if not resumed:
        return now
    before = number(base.get(key)) if base is not None else None
    if before is None or before > now:
        return None
    diff = now - before
    return round(diff, 10) if isinstance(diff, float) else diff
