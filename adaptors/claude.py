"""The `claude` adaptor: Claude Code in print mode with the stream-json event stream.

argv: `claude -p --output-format stream-json --verbose --dangerously-skip-permissions
[--model M] [--resume SESSION] [args...] -- PROMPT`.

References:
- Claude Code CLI reference (https://docs.anthropic.com/en/docs/claude-code/cli-reference):
  `-p/--print` (non-interactive, print and exit), `--output-format text|json|stream-json`
  (stream-json needs `--verbose` in print mode), `--model`, `-r/--resume <session-id>`,
  `--dangerously-skip-permissions` (= `--permission-mode bypassPermissions`: no tool prompt can
  block a job that nobody watches; note Claude Code refuses it as root, so give the agent a
  `user`). The CLI is commander-based: `--` ends the options, the prompt follows.
- The stream-json format (one JSON object per line), as described by the Claude Code SDK docs
  and parsers such as docs.rs `ralph-adapters::ClaudeStreamEvent` / `coven` protocol types:
    {"type":"system","subtype":"init","session_id":..,"model":..,"tools":[..]}
    {"type":"assistant","message":{"content":[{"type":"text","text":..},
        {"type":"tool_use","id":..,"name":"Bash","input":{"command":"ls"}}]},"session_id":..}
    {"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":..,
        "content":"..." | [{"type":"text","text":..}],"is_error":false}]}}
    {"type":"result","subtype":"success","is_error":false,"result":"..","num_turns":..,
        "duration_ms":..,"total_cost_usd":..,"session_id":..}
The session id is the top-level `session_id` (system/init first, any later event too).
"""

from __future__ import annotations

from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "parse_line"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The claude command line for `spec`."""
    argv = [binary, "-p", "--output-format", "stream-json", "--verbose",
            "--dangerously-skip-permissions"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv += ["--resume", spec.resume_session]
    return [*argv, *spec.args, "--", spec.prompt]


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _assistant(message: dict[str, Any], state: ParseState) -> list[str]:
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


def _result(event: dict[str, Any], state: ParseState) -> list[str]:
    facts = [str(event.get("subtype") or ("error" if event.get("is_error") else "success"))]
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


def parse_line(line: bytes, state: ParseState) -> list[str]:
    """Render one stream-json line; note the session id."""
    event = event_of(line)
    if event is None:
        return plain(line)
    if isinstance(event.get("session_id"), str):
        state.session_id = event["session_id"]
    kind = event.get("type")
    message = sub(event, "message")
    if kind == "system" and event.get("subtype") == "init":
        model = f" (model {event['model']})" if event.get("model") else ""
        return [f"[session] {state.session_id}{model}\n"]
    if kind == "assistant":
        return _assistant(message, state)
    if kind == "user":
        return _user(message)
    if kind == "result":
        return _result(event, state)
    return []


ADAPTOR = Adaptor(name="claude", default_binary="claude", build_argv=build_argv,
                  parse_line=parse_line)
