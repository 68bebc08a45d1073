"""The `claude` adaptor: Claude Code in print mode with the stream-json event stream.

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._report import ANSI, Report, first_line, number, since, usage
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "env", "forced_env", "note_line", "parse_line", "report"]

#: The version this adaptor was verified against (README, tests/agents).
VERIFIED = "2.1.332"


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The claude command line for `spec` (the prompt comes on stdin)."""
    argv = [binary, "-p", "--output-format", "stream-json", "--verbose",
            "--dangerously-skip-permissions"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv += ["--resume", spec.resume_session]
    return [*argv, *spec.args]


def env(spec: JobSpec, uid: int) -> dict[str, str]:
    """Quiet, bounded defaults (each only where unset)."""
    return {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_MAX_RETRIES": "3"}


def forced_env(spec: JobSpec, uid: int) -> dict[str, str]:
    """IS_SANDBOX=1 when the agent runs as root: claude accepts exactly "1" (an inherited
    IS_SANDBOX=yes still refuses), so it is set unless the agent's own env says otherwise."""
    return {"IS_SANDBOX": "1"} if uid == 0 else {}


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _assistant(event: dict[str, Any], state: ParseState) -> list[str]:
    message = sub(event, "message")
    if isinstance(event.get("error"), str):
        text = first_line(_result_text(message.get("content")))
        state.data["assistant_error"] = text or str(event["error"])
    out: list[str] = []
    for part in message.get("content") or []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and str(part.get("text", "")).strip():
            text = str(part["text"])
            state.data["last_text"] = text.strip()
            out.append(text if text.endswith("\n") else text + "\n")
        elif kind == "tool_use":
            out.append(tool_call(str(part.get("name", "?")), part.get("input")))
    return out


def _user(message: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for part in message.get("content") or []:
        if isinstance(part, dict) and part.get("type") == "tool_result":
            label = "[tool error]" if part.get("is_error") else "[tool result]"
            out.append(block(label, _result_text(part.get("content"))))
    return out


def _error_of(event: Mapping[str, Any]) -> str | None:
    """A result event's error message, or None when it reports success."""
    subtype = event.get("subtype")
    if event.get("is_error") is not True and subtype in (None, "success"):
        return None
    errors = event.get("errors")
    texts = [first_line(event.get("result"))]
    if isinstance(errors, list):
        texts += [first_line(e if isinstance(e, str) else str(e)) for e in errors]
    for text in texts:
        if text:
            return text
    return f"result {subtype or 'error'}"


def _result(event: dict[str, Any], state: ParseState) -> list[str]:
    state.data["result"] = event
    error = _error_of(event)
    facts = ["error" if error is not None else str(event.get("subtype") or "success")]
    if isinstance(event.get("num_turns"), int):
        facts.append(f"{event['num_turns']} turns")
    if isinstance(event.get("duration_ms"), (int, float)):
        facts.append(f"{event['duration_ms'] / 1000:.1f}s")
    if isinstance(event.get("total_cost_usd"), (int, float)):
        facts.append(f"${event['total_cost_usd']:.4f}")
    out = [f"[result] {', '.join(facts)}\n"]
    text = event.get("result")
    if isinstance(text, str) and text.strip() and text.strip() != state.data.get("last_text"):
        out.append(text if text.endswith("\n") else text + "\n")
    return out


def _system(event: dict[str, Any], state: ParseState) -> list[str]:
    if event.get("subtype") == "init":
        model = f" (model {event['model']})" if event.get("model") else ""
        return [f"[session] {state.session_id}{model}\n"]
    if event.get("subtype") == "api_retry":
        status = f" {event['error_status']}" if event.get("error_status") else ""
        return [f"[retry] attempt {event.get('attempt', '?')}/{event.get('max_retries', '?')}:"
                f" {event.get('error') or 'API error'}{status}\n"]
    return []


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one stream-json line; note the session id, the result and any error."""
    event = event_of(line)
    if event is None:
        return plain(line)
    if isinstance(event.get("session_id"), str):
        state.session_id = event["session_id"]
    kind = event.get("type")
    if kind == "system":
        return _system(event, state)
    if kind == "assistant":
        return _assistant(event, state)
    if kind == "user":
        return _user(sub(event, "message"))
    if kind == "result":
        return _result(event, state)
    return []


def note_line(line: bytes, state: ParseState) -> None:
    """A stderr line: the first non-blank ones are claude's own error messages."""
    text = ANSI.sub("", line.decode("utf-8", errors="replace")).strip()
    notes: list[str] = state.data.setdefault("stderr", [])
    if text and len(notes) < 20:
        notes.append(text)


def _run_cost(result: Mapping[str, Any], base: Mapping[str, Any] | None,
              resumed: bool) -> float | int | None:
    per_model = result.get("model_usage_since_last_result")
    if isinstance(per_model, dict) and per_model:
        costs = [number(m.get("costUSD")) for m in per_model.values() if isinstance(m, dict)]
        if costs and all(c is not None for c in costs):
            return sum(c for c in costs if c is not None)
    return since(result.get("total_cost_usd"), base, "cost_usd", resumed)


def report(state: ParseState, spec: JobSpec, exit_code: int | None,
           base: Mapping[str, Any] | None) -> Report:
    """The run's verdict, usage and session from the events and stderr (module docstring)."""
    result = state.data.get("result")
    error: str | None = None
    run_usage = totals = None
    if isinstance(result, dict):
        error = _error_of(result)
        counts = sub(result, "usage")
        inputs = [number(counts.get(k)) for k in ("input_tokens", "cache_creation_input_tokens",
                                                  "cache_read_input_tokens")]
        run_usage = usage(
            None if inputs[0] is None else sum(n for n in inputs if n is not None),
            counts.get("output_tokens"), _run_cost(result, base, spec.resume_of is not None),
            result.get("num_turns"))
        if number(result.get("total_cost_usd")) is not None:
            totals = {"cost_usd": result["total_cost_usd"]}
    if error is None and isinstance(state.data.get("assistant_error"), str):
        error = state.data["assistant_error"]
    if error is None and result is None and exit_code not in (0, None):
        notes = state.data.get("stderr") or []
        error = first_line(notes[0]) if notes else None
    return Report(error=error, usage=run_usage, totals=totals, session_id=state.session_id)


ADAPTOR = Adaptor(name="claude", build_argv=build_argv, parse_line=parse_line,
                  note_line=note_line, report=report, env=env, forced_env=forced_env)
