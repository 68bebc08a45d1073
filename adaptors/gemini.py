"""The `gemini` adaptor: Gemini CLI headless mode with the stream-json event stream.

argv: `gemini --prompt=PROMPT --output-format stream-json --yolo [--model M]
[--resume SESSION] [args...]`.

References:
- Gemini CLI "Headless mode reference" (https://geminicli.com/docs/cli/headless/, the repo's
  docs/cli/headless.md): headless mode is triggered by `-p/--prompt`; `--output-format
  text|json|stream-json`; stream-json is JSONL with event types `init` (session id, model),
  `message` (user/assistant chunks), `tool_use`, `tool_result`, `error` (non-fatal warnings),
  `result` (final outcome and stats); exit codes 0, 1, 42 (input error), 53 (turn limit).
- Gemini CLI flags (docs/cli reference): `-m/--model`, `-y/--yolo` (auto-approve every tool
  call: nobody answers a prompt in a batch job), `-r/--resume <id|latest>`.
- Field names as emitted (google-gemini/gemini-cli stream-json events, e.g. the TypeScript event
  types used by cyrus and cli-agent-mcp parsers):
    {"type":"init","timestamp":..,"session_id":..,"model":..}
    {"type":"message","role":"assistant","content":"..","delta":true}
    {"type":"tool_use","tool_name":"run_shell_command","tool_id":..,"parameters":{..}}
    {"type":"tool_result","tool_id":..,"status":"success"|"error","output":"..","error":{..}}
    {"type":"error","severity":"warning","message":".."}
    {"type":"result","status":"success","stats":{"total_tokens":..,"duration_ms":..}}
The prompt is passed as `--prompt=PROMPT` so one starting with "-" stays the flag's value.
Assistant deltas are appended as they come (no newline per chunk); the next non-text event
starts on a new line. The session id is init's `session_id`.
"""

from __future__ import annotations

from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "parse_line"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The gemini command line for `spec`."""
    argv = [binary, f"--prompt={spec.prompt}", "--output-format", "stream-json", "--yolo"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv += ["--resume", spec.resume_session]
    return argv + list(spec.args)


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
        out = [_stats(event)]
        err = sub(event, "error")
        if err.get("message"):
            out.append(f"[error] {err['message']}\n")
        return out
    return []


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one stream-json line; note the session id."""
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
        if isinstance(event.get("session_id"), str):
            state.session_id = event["session_id"]
        texts = _render(event, state)
    if texts and state.data.pop("open_text", False):
        texts.insert(0, "\n")
    return texts


ADAPTOR = Adaptor(name="gemini", default_binary="gemini", build_argv=build_argv,
                  parse_line=parse_line)
