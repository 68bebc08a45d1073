"""The `codex` adaptor: OpenAI Codex CLI `codex exec` with its JSONL event stream.

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._report import ANSI, Report, first_line, since, usage
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "note_line", "parse_line", "report"]

#: The version this adaptor was verified against (README, tests/agents).
VERIFIED = "0.171.0"

#: Options that keep codex quiet and its retries bounded (see the module docstring).
QUIET = ("-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false",
         "--disable", "unbounded_connection_retries")


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The codex command line for `spec` (the prompt comes on stdin)."""
    argv = [binary, "exec", "--json", "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox", *QUIET]
    if spec.model:
        argv += ["--model", spec.model]
    argv += spec.args
    if spec.resume_session:
        argv += ["resume", spec.resume_session]
    return [*argv, "-"]


def _tool_line(kind: str, item: dict[str, Any]) -> str | None:
    if kind == "command_execution":
        return tool_call("shell", str(item.get("command", "")))
    if kind == "mcp_tool_call":
        return tool_call(f"{item.get('server', '?')}.{item.get('tool', '?')}",
                         item.get("arguments"))
    if kind == "web_search":
        return tool_call("web_search", str(item.get("query", "")))
    return None


def _completed(kind: str, item: dict[str, Any], started: bool) -> list[str]:
    out: list[str] = []
    tool = _tool_line(kind, item)
    if tool is not None and not started:
        out.append(tool)
    if kind in ("agent_message", "assistant_message"):
        text = str(item.get("text", ""))
        out.append(text if text.endswith("\n") else text + "\n")
    elif kind == "command_execution":
        code = item.get("exit_code")
        label = "[tool result]" if code in (0, None) else "[tool error]"
        exit_note = f" (exit {code})" if code is not None else ""
        out.append(block(label + exit_note, str(item.get("aggregated_output") or "")))
    elif kind == "file_change":
        changes = [f"{c.get('kind', 'change')} {c.get('path', '?')}"
                   for c in item.get("changes") or [] if isinstance(c, dict)]
        out.append(f"[edit] {', '.join(changes)}\n")
    elif kind == "error":
        out.append(f"[warning] {item.get('message', '')}\n")
    return out


def _item(event_type: str, item: dict[str, Any], state: ParseState) -> list[str]:
    kind = str(item.get("type") or item.get("item_type") or "")
    started: set[str] = state.data.setdefault("started", set())
    item_id = str(item.get("id", ""))
    if event_type == "item.started":
        tool = _tool_line(kind, item)
        if tool is None:
            return []
        started.add(item_id)
        return [tool]
    if event_type == "item.completed":
        return _completed(kind, item, item_id in started)
    return []


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one `codex exec --json` line; note the thread id, usage and errors."""
    event = event_of(line)
    if event is None:
        return plain(line)
    kind = str(event.get("type", ""))
    if kind == "thread.started" and isinstance(event.get("thread_id"), str):
        state.session_id = event["thread_id"]
        return [f"[session] {state.session_id}\n"]
    if kind.startswith("item."):
        return _item(kind, sub(event, "item"), state)
    if kind == "turn.completed":
        counts = sub(event, "usage")
        state.data["usage"] = counts
        state.data["turns"] = int(state.data.get("turns", 0)) + 1
        return [f"[turn completed] {counts.get('input_tokens', '?')} tokens in, "
                f"{counts.get('output_tokens', '?')} out\n"]
    if kind == "turn.failed":
        message = str(sub(event, "error").get("message", ""))
        state.data["failed"] = message or "turn failed"
        return [f"[error] turn failed: {message}\n"]
    if kind == "error":
        state.data["last_error"] = str(event.get("message", ""))
        return [f"[error] {event.get('message', '')}\n"]
    return []


def note_line(line: bytes, state: ParseState) -> None:
    """A stderr line: codex's `Error: ...` messages (and its no-prompt message) are kept."""
    text = ANSI.sub("", line.decode("utf-8", errors="replace")).strip()
    if text.lower().startswith("error") or text.startswith("No prompt provided"):
        state.data.setdefault("stderr_error", text)


def report(state: ParseState, spec: JobSpec, exit_code: int | None,
           base: Mapping[str, Any] | None) -> Report:
    """The run's verdict, usage (this run's share of the thread's) and thread id."""
    error: str | None = None
    if isinstance(state.data.get("failed"), str):
        error = first_line(state.data["failed"])
    elif "usage" not in state.data and state.data.get("last_error"):
        error = first_line(state.data["last_error"])
    elif exit_code not in (0, None) and isinstance(state.data.get("stderr_error"), str):
        error = first_line(state.data["stderr_error"])
    run_usage = totals = None
    counts = state.data.get("usage")
    if isinstance(counts, dict):
        resumed = spec.resume_of is not None
        totals = {k: counts.get(k) for k in ("input_tokens", "output_tokens")}
        run_usage = usage(since(counts.get("input_tokens"), base, "input_tokens", resumed),
                          since(counts.get("output_tokens"), base, "output_tokens", resumed),
                          None, state.data.get("turns"))
    return Report(error=error, usage=run_usage, totals=totals, session_id=state.session_id)


ADAPTOR = Adaptor(name="codex", build_argv=build_argv, parse_line=parse_line,
                  note_line=note_line, report=report)
