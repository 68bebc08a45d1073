"""The `gemini` adaptor: Gemini CLI headless mode with the stream-json event stream.

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._report import ANSI, Report, first_line, usage
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "note_line", "parse_line", "report"]

#: The version this adaptor was verified against (README, tests/agents).
VERIFIED = "0.61.0"

#: stderr lines gemini prints on every run, which never name an error.
_NOISE = re.compile(r"^(Warning: 256-color|YOLO mode is enabled|Ripgrep is not available|"
                    r"Approval mode overridden|\[STARTUP\]|Loaded cached credentials|"
                    r"at |Error when talking to Gemini API|Full report available)")
_API_ERROR = re.compile(r"^\[API Error: (.*)\]$", re.DOTALL)


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The gemini command line for `spec` (the prompt comes on stdin)."""
    argv = [binary, "--output-format", "stream-json", "--yolo", "--skip-trust"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv += ["--resume", spec.resume_session]
    return argv + list(spec.args)


def _error_text(error: Mapping[str, Any]) -> str:
    """A result error's message; an API error's JSON body reduced to its code and message."""
    message = str(error.get("message") or error.get("type") or "error")
    match = _API_ERROR.match(message.strip())
    if match:
        try:
            body = json.loads(match.group(1))
        except ValueError:
            body = None
        inner = sub(body, "error") if isinstance(body, dict) else {}
        if inner.get("message"):
            code = f" {inner['code']}" if inner.get("code") else ""
            return f"API error{code}: {inner['message']}"
    return message


def _stats(event: dict[str, Any]) -> str:
    stats = sub(event, "stats")
    facts = [str(event.get("status") or "done")]
    if isinstance(stats.get("total_tokens"), int):
        facts.append(f"{stats['total_tokens']} tokens")
    if isinstance(stats.get("tool_calls"), int):
        facts.append(f"{stats['tool_calls']} tool calls")
    if isinstance(stats.get("duration_ms"), (int, float)):
        facts.append(f"{stats['duration_ms'] / 1000:.1f}s")
    return f"[result] {', '.join(facts)}\n"


def _render(event: dict[str, Any], state: ParseState) -> list[str]:
    kind = event.get("type")
    if kind == "init":
        model = f" (model {event['model']})" if event.get("model") else ""
        return [f"[session] {state.session_id}{model}\n"]
    if kind == "tool_use":
        return [tool_call(str(event.get("tool_name", "?")), event.get("parameters"))]
    if kind == "tool_result":
        if event.get("status") == "error":
            err = sub(event, "error")
            return [block("[tool error]", str(err.get("message") or event.get("output") or ""))]
        return [block("[tool result]", str(event.get("output") or ""))]
    if kind == "error":
        return [f"[{event.get('severity') or 'error'}] {event.get('message', '')}\n"]
    if kind == "result":
        state.data["result"] = event
        out = [_stats(event)]
        err = sub(event, "error")
        if err:
            out.append(f"[error] {_error_text(err)}\n")
        return out
    return []


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one stream-json line; note the session id and the result."""
    event = event_of(line)
    if event is None:
        texts = plain(line)
    elif event.get("type") == "message":
        if event.get("role") != "assistant" or not isinstance(event.get("content"), str):
            return []
        text = str(event["content"])
        if not event.get("delta") and not text.endswith("\n"):
            text += "\n"
        if text:
            state.data["open_text"] = not text.endswith("\n")
        return [text] if text else []
    else:
        if event.get("type") == "init" and isinstance(event.get("session_id"), str):
            state.session_id = event["session_id"]
        texts = _render(event, state)
    if texts and state.data.pop("open_text", False):
        texts.insert(0, "\n")
    return texts


def note_line(line: bytes, state: ParseState) -> None:
    """A stderr line: gemini's own messages (not its every-run warnings) are kept."""
    text = ANSI.sub("", line.decode("utf-8", errors="replace")).strip()
    notes: list[str] = state.data.setdefault("stderr", [])
    if text and not _NOISE.match(text) and len(notes) < 20:
        notes.append(text)


def report(state: ParseState, spec: JobSpec, exit_code: int | None,
           base: Mapping[str, Any] | None) -> Report:
    """The run's verdict, usage and session (module docstring)."""
    result = state.data.get("result")
    error: str | None = None
    run_usage = None
    if isinstance(result, dict):
        if result.get("status") != "success":
            error = first_line(_error_text(sub(result, "error")))
        stats = sub(result, "stats")
        run_usage = usage(stats.get("input_tokens"), stats.get("output_tokens"))
    elif exit_code not in (0, None):
        notes = state.data.get("stderr") or []
        error = first_line(notes[0]) if notes else None
    return Report(error=error, usage=run_usage, session_id=state.session_id)


ADAPTOR = Adaptor(name="gemini", build_argv=build_argv, parse_line=parse_line,
                  note_line=note_line, report=report)
