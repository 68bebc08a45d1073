"""The `opencode` adaptor: `opencode run` with its JSON event stream.

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._report import ANSI, Report, first_line, number, usage
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "env", "note_line", "parse_line", "report"]

#: The version this adaptor was verified against (README, tests/agents).
VERIFIED = "1.18.33"


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The opencode command line for `spec` (the prompt comes on stdin, never argv)."""
    argv = [binary, "run", "--format", "json", "--auto"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv += ["--session", spec.resume_session]
    return [*argv, *spec.args]


def env(spec: JobSpec, uid: int) -> dict[str, str]:
    """No update checks, no sharing, no language-server downloads."""
    return {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}


def _tool(part: dict[str, Any]) -> list[str]:
    tool_state = sub(part, "state")
    out = [tool_call(str(part.get("tool", "?")), tool_state.get("input"))]
    status = tool_state.get("status")
    if status == "completed":
        out.append(block("[tool result]", str(tool_state.get("output") or "")))
    elif status == "error":
        out.append(block("[tool error]", str(tool_state.get("error") or "")))
    return out


def _error_message(event: dict[str, Any]) -> str:
    err = sub(event, "error")
    message = sub(err, "data").get("message") or err.get("message") or event.get("message")
    name = err.get("name")
    return str(message or name or "error")


def _step(part: dict[str, Any], state: ParseState) -> list[str]:
    tokens = sub(part, "tokens")
    cache = sub(tokens, "cache")
    sums: dict[str, float] = state.data.setdefault(
        "sums", {"input": 0, "output": 0, "cost": 0.0, "steps": 0, "priced": 0})
    sums["input"] += sum(number(v) or 0 for v in (tokens.get("input"), cache.get("read"),
                                                  cache.get("write")))
    sums["output"] += sum(number(v) or 0 for v in (tokens.get("output"),
                                                   tokens.get("reasoning")))
    cost = number(part.get("cost"))
    if cost is not None:
        sums["cost"] += cost
        sums["priced"] += 1
    sums["steps"] += 1
    if part.get("reason") != "stop":
        return []
    cost_note = f", ${cost:.4f}" if cost is not None else ""
    return [f"[result] done, {tokens.get('input', '?')} tokens in, "
            f"{tokens.get('output', '?')} out{cost_note}\n"]


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one `opencode run --format json` line; note the session, usage, errors."""
    event = event_of(line)
    if event is None:
        return plain(line)
    if isinstance(event.get("sessionID"), str):
        state.session_id = event["sessionID"]
    kind = event.get("type")
    part = sub(event, "part")
    if kind == "text":
        text = str(part.get("text", ""))
        return [text if text.endswith("\n") else text + "\n"] if text.strip() else []
    if kind == "tool_use":
        return _tool(part)
    if kind == "step_finish":
        return _step(part, state)
    if kind == "error":
        message = _error_message(event)
        state.data.setdefault("error", message)
        name = sub(event, "error").get("name")
        return [f"[error] {name + ': ' if name else ''}{message}\n"]
    return []


def note_line(line: bytes, state: ParseState) -> None:
    """A stderr line: opencode's `Error: ...` messages are kept."""
    text = ANSI.sub("", line.decode("utf-8", errors="replace")).strip()
    if text.startswith("Error"):
        state.data.setdefault("stderr_error", text)


def report(state: ParseState, spec: JobSpec, exit_code: int | None,
           base: Mapping[str, Any] | None) -> Report:
    """The run's verdict, usage summed over its steps, and session (module docstring)."""
    error: str | None = None
    if isinstance(state.data.get("error"), str):
        error = first_line(state.data["error"])
    elif exit_code not in (0, None) and isinstance(state.data.get("stderr_error"), str):
        error = first_line(state.data["stderr_error"])
    sums = state.data.get("sums")
    run_usage = None
    if isinstance(sums, dict):
        run_usage = usage(sums["input"], sums["output"],
                          sums["cost"] if sums["priced"] else None, sums["steps"])
    return Report(error=error, usage=run_usage, session_id=state.session_id)


ADAPTOR = Adaptor(name="opencode", build_argv=build_argv, parse_line=parse_line,
                  note_line=note_line, report=report, env=env)
