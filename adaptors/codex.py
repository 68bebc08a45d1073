"""The `codex` adaptor: OpenAI Codex CLI `codex exec` with its JSONL event stream.

argv: `codex exec --json --skip-git-repo-check --sandbox workspace-write [--model M] [args...]
[resume SESSION] -- PROMPT`.

References:
- "Non-interactive mode" (https://developers.openai.com/codex/noninteractive): `codex exec`
  runs one task and exits; read-only sandbox by default, `--sandbox workspace-write` to let it
  edit (`--full-auto` is kept only as a deprecated alias); `codex exec resume <SESSION_ID>`.
- openai/codex `codex-rs/exec/src/cli.rs`: `--json` "Print events to stdout as JSONL" (alias
  `--experimental-json`), `--skip-git-repo-check` (workspaces need not be git repos), `--model`
  and `--json` are global (valid after `resume`), `--sandbox` is not (so it comes before
  `resume`); `resume [SESSION_ID] [PROMPT]`; clap, so `--` ends the options.
- openai/codex docs/exec.md "JSON output" event types:
    {"type":"thread.started","thread_id":"67e55044-..."}   (the id `resume` takes)
    {"type":"turn.started"}
    {"type":"item.started"|"item.updated"|"item.completed","item":{"id":..,"type":..}}
      item types: agent_message {text}, reasoning {text}, command_execution {command,
      aggregated_output, exit_code, status}, file_change {changes:[{path,kind}]},
      mcp_tool_call {server, tool, arguments}, web_search {query}, todo_list, error {message}
    {"type":"turn.completed","usage":{"input_tokens":..,"cached_input_tokens":..,
      "output_tokens":..}} / {"type":"turn.failed","error":{"message":..}}
    {"type":"error","message":..}
Older builds spelled the item kind `item_type` (and `assistant_message`); both are read.
The session id is `thread.started`'s `thread_id`.
"""

from __future__ import annotations

from typing import Any

from adaptors._render import ParseState, block, event_of, plain, sub, tool_call
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv", "parse_line"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The codex command line for `spec`."""
    argv = [binary, "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write"]
    if spec.model:
        argv += ["--model", spec.model]
    argv += spec.args
    if spec.resume_session:
        argv += ["resume", spec.resume_session]
    return [*argv, "--", spec.prompt]


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
        out.append(f"[error] {item.get('message', '')}\n")
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
    """Render one `codex exec --json` line; note the thread (session) id."""
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
        usage = sub(event, "usage")
        return [f"[turn completed] {usage.get('input_tokens', '?')} tokens in, "
                f"{usage.get('output_tokens', '?')} out\n"]
    if kind == "turn.failed":
        return [f"[error] turn failed: {sub(event, 'error').get('message', '')}\n"]
    if kind == "error":
        return [f"[error] {event.get('message', '')}\n"]
    return []


ADAPTOR = Adaptor(name="codex", default_binary="codex", build_argv=build_argv,
                  parse_line=parse_line)
