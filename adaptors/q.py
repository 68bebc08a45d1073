"""The `q` adaptor: Amazon Q Developer CLI (`q`) or its successor Kiro CLI (`kiro-cli`), chat.

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaptors._render import ParseState
from adaptors._report import ANSI, Report, first_line
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "note_line", "report"]

_KIRO_TROUBLE = "Kiro is having trouble responding right now"


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The q / kiro-cli command line for `spec` (the prompt comes on stdin)."""
    argv = [binary, "chat", "--no-interactive", "--trust-all-tools"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_of is not None or spec.resume_session:
        argv.append("--resume")
    return [*argv, *spec.args]


def note_line(line: bytes, state: ParseState) -> None:
    """One line of q's output (read back after the exit): its `error:` lines."""
    text = ANSI.sub("", line.decode("utf-8", errors="replace")).strip()
    if text.startswith("error:"):
        state.data["error"] = text[len("error:"):].strip() or text
    elif _KIRO_TROUBLE in text:
        state.data["trouble"] = text


def report(state: ParseState, spec: JobSpec, exit_code: int | None,
           base: Mapping[str, Any] | None) -> Report:
    """q's verdict from its output; no usage, no session id."""
    error = None
    if exit_code not in (0, None) and isinstance(state.data.get("error"), str):
        error = first_line(state.data["error"])
    elif isinstance(state.data.get("trouble"), str):
        error = first_line(state.data["trouble"])
    return Report(error=error)


ADAPTOR = Adaptor(name="q", build_argv=build_argv, note_line=note_line, report=report)
