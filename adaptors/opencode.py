"""The `opencode` adaptor: `opencode run` with its JSON event stream.

argv: `opencode run --format json --auto [--model PROVIDER/MODEL] [--session SESSION]
[args...] -- PROMPT`.

References:
- opencode CLI docs (https://opencode.ai/docs/cli, "run"): `opencode run [message..]` runs one
  prompt non-interactively; `--format json` emits one JSON object per line for scripts;
  `-m/--model provider/model`; `-s/--session <id>` continues that session (`-c/--continue`
  the last one).
- opencode permissions docs (https://opencode.ai/docs/permissions, "Auto mode"):
  `opencode run --auto` approves every permission request not explicitly denied (a batch job
  has nobody to answer an "ask").
- The `run --format json` events (takopi's opencode runner docs/runner/opencode and its
  event cheatsheet):
    {"type":"step_start","timestamp":..,"sessionID":"ses_..","part":{..}}
    {"type":"text","sessionID":..,"part":{"type":"text","text":".."}}
    {"type":"tool_use","sessionID":..,"part":{"tool":"bash","callID":..,
      "state":{"status":"completed"|"error"|..,"input":{..},"output":"..","title":".."}}}
    {"type":"step_finish","sessionID":..,"part":{"reason":"stop"|"tool-calls",
      "tokens":{..},"cost":..}}
    {"type":"error","sessionID":..,"error":{"name":..,"data":{"message":..}}}
yargs takes what follows `--` as positionals, so a prompt starting with "-" stays the message.
The session id is the top-level `sessionID` (ses_...).
"""

from __future__ import annotations

from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "parse_line"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The opencode command line for `spec`."""
    argv = [binary, "run", "--format", "json", "--auto"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv += ["--session", spec.resume_session]
    return [*argv, *spec.args, "--", spec.prompt]


def _tool(part: dict[str, Any]) -> list[str]:
    tool_state = sub(part, "state")
    out = [tool_call(str(part.get("tool", "?")), tool_state.get("input"))]
    status = tool_state.get("status")
    if status == "completed":
        out.append(block("[tool result]", str(tool_state.get("output") or "")))
    elif status == "error":
        out.append(block("[tool error]", str(tool_state.get("error") or "")))
    return out


def _error(event: dict[str, Any]) -> str:
    err = sub(event, "error")
    message = sub(err, "data").get("message") or err.get("message") or event.get("message")
    name = err.get("name")
    return f"[error] {name + ': ' if name else ''}{message or ''}\n"


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one `opencode run --format json` line; note the session id."""
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
    if kind == "step_finish" and part.get("reason") == "stop":
        tokens = sub(part, "tokens")
        cost = part.get("cost")
        cost_note = f", ${cost:.4f}" if isinstance(cost, (int, float)) else ""
        return [f"[result] done, {tokens.get('input', '?')} tokens in, "
                f"{tokens.get('output', '?')} out{cost_note}\n"]
    if kind == "error":
        return [_error(event)]
    return []


ADAPTOR = Adaptor(name="opencode", default_binary="opencode", build_argv=build_argv,
                  parse_line=parse_line)
