"""The `q` adaptor: Amazon Q Developer CLI (`q`) or its successor Kiro CLI (`kiro-cli`), chat.

Not verified against a running CLI: neither `q` nor `kiro-cli` is published on npm, PyPI
or Debian (both install from AWS's own download scripts). The flags come from the q source
(aws/amazon-q-developer-cli, crate chat_cli 1.19.7, `ChatArgs`) and the Kiro CLI docs
(kiro.dev/docs/cli: headless mode, exit codes, sessions). The open-source q is no longer
maintained; kiro-cli takes the same chat flags. A spec without `command` runs `q`, or
`kiro-cli` when there is no `q` on the PATH (config.ADAPTOR_COMMANDS).

argv: `q chat --no-interactive --trust-all-tools [--model M] [--resume] [args...]`, the
prompt on stdin (the job's prompt file). With `--no-interactive`, no INPUT argument and a
non-terminal stdin, q reads all of stdin as the prompt and strips leading and trailing
whitespace (`buffer.trim()`): the prompt reaches q exact except for that whitespace;
kiro-cli reads "the full stream as the instruction". Not argv: a prompt starting with
"-" would need `--`, and argv is limited to 128 KiB.
- `--trust-all-tools`: without it a tool that needs approval fails ("Tool approval required
  but --no-interactive was specified").
- Resuming: `--resume` continues "the previous conversation from this directory" (q has no
  session id; kiro-cli prints none in headless mode), so a resumed job (any `resume_of`)
  runs in its predecessor's workspace with `--resume`, and q reports no session id.
- Authentication: q uses its own login (`q login`, "You are not logged in, please log in
  with q login"); kiro-cli headless uses KIRO_API_KEY. Neither offers a base-URL override.

Output is plain terminal text (no JSON mode for chat, no usage): stdout and stderr go
straight to the output file, read back after the exit for the verdict: with a non-zero exit
the `error: <message>` line q prints on stderr (the last one); kiro-cli's "Kiro is having
trouble responding right now" is an error even with exit 0. Exit codes: 0 success; 1 any
error (not logged in, model not found, tool approval refused); 2 a usage error (clap:
"error: unexpected argument '--x' found"); kiro-cli 3 an MCP server failed to start (with
`--require-mcp-startup`).
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
