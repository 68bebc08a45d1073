"""The `aider` adaptor: Aider in scripting mode, plain-text output.

Verified against aider 0.86.2 (`aider-chat` on PyPI, `aider --version`: `aider 0.86.2`),
run against a mock OpenAI Chat Completions API (tests/agents, `make test-agents`).

argv: `aider --model M --message-file <job dir>/prompt --yes-always --no-check-update
--no-show-release-notes --analytics-disable --no-gitignore --no-show-model-warnings
--no-pretty --no-fancy-input --no-detect-urls --no-stream [--restore-chat-history
[--chat-history-file F]] [args...]`, stdin /dev/null.
- The prompt is the job's prompt file, by absolute path (a relative one is taken from the
  git root, and a missing file is not fatal: aider then drops into its interactive chat,
  which with stdin /dev/null ends at once, exit 0). Byte for byte, 100 KB too.
- A model always: without one (no `model`, no `--model` in `args`) and without a provider
  key aider starts an OpenRouter OAuth login that waits 5 minutes for a browser on
  localhost:8484. Such a job is refused at submit (state.agentbin.refusal) and here.
- `--yes-always` also answers aider's start-up questions, so the flags above turn them
  off: `--no-gitignore` (else it adds `.aider*` to the workspace's .gitignore),
  `--no-show-release-notes`, `--no-check-update` (pypi.org), `--analytics-disable`,
  `--no-show-model-warnings`, `--no-detect-urls` (no URL scraping); `--no-pretty`,
  `--no-fancy-input`: plain text; `--no-stream`: the token counts are the server's.
- Resuming: aider has no session id; its session is the chat history file
  (`.aider.chat.history.md` in the workspace, or `--chat-history-file`), reported as the
  session id when it exists. A resumed job runs in the same workspace with
  `--restore-chat-history` (and `--chat-history-file` when the id is another file).

Quiet defaults (set only when unset): LITELLM_LOCAL_MODEL_COST_MAP=True (no download of
litellm's price list at start), BROWSER=true (a URL aider decides to open goes nowhere).

Output is plain text: stdout and stderr go straight to the output file; the adaptor reads
it back after the exit. Exit code: 0 for success AND for API errors (a 401, a missing key,
a missing message file), so the verdict is aider's documented error lines: a
`litellm.<Kind>Error: ...` line ("litellm.AuthenticationError: AuthenticationError:
OpenAIException - Incorrect API key provided: ..."), "The API provider is not able to
authenticate you", "<file>: file not found error", "No LLM model was specified" — the
first one after the last `Tokens:` line (an error aider retried past is not the verdict).
aider wraps long lines at 80 columns leaving a trailing space: such lines are joined.

Usage: each LLM call prints `Tokens: <n> sent[, <n> cache write][, <n> cache hit], <n>
received.[ Cost: $<x> message, $<y> session.]` (counts like 2.6k are aider's rounding):
input = the sum of `sent`, output = the sum of `received`, cost = the last `session`
figure (aider's session is the process), turns = the `Tokens:` lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adaptors._render import ParseState
from adaptors._report import ANSI, Report, first_line, usage
from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec
from supervisor.state.layout import JobPaths

__all__ = ["ADAPTOR", "build_argv", "env", "note_line", "refuse", "report"]

#: The version this adaptor was verified against (README, tests/agents).
VERIFIED = "0.86.2"

#: What keeps aider from asking, writing its files into .gitignore or calling home.
FLAGS = ("--yes-always", "--no-check-update", "--no-show-release-notes", "--analytics-disable",
         "--no-gitignore", "--no-show-model-warnings", "--no-pretty", "--no-fancy-input",
         "--no-detect-urls", "--no-stream")
HISTORY = ".aider.chat.history.md"

_TOKENS = re.compile(r"Tokens: ([\d.]+k?) sent(?:, [\d.]+k? cache write)?"
                     r"(?:, [\d.]+k? cache hit)?, ([\d.]+k?) received\."
                     r"(?: Cost: \$([\d.]+) message, \$([\d.]+) session\.)?")
_ERRORS = re.compile(r"^(litellm\.[A-Za-z]*Error\b|The API provider is not able to "
                     r"authenticate you|No LLM model was specified|.*: file not found error$)")


def _option(args: tuple[str, ...], name: str) -> str | None:
    """The value of `name VALUE` / `name=VALUE` in args (the last one), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def refuse(spec: JobSpec) -> str | None:
    """aider without a model: never started (see the module docstring)."""
    if spec.model or _option(spec.args, "--model") is not None:
        return None
    return ("aider needs a model (`model` in the agent's configuration): without one it "
            "starts an interactive OpenRouter login")


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The aider command line for `spec`: the prompt is the job's prompt file."""
    argv = [binary]
    if spec.model:
        argv += ["--model", spec.model]
    argv += ["--message-file", str(JobPaths(Path(spec.job_dir)).prompt), *FLAGS]
    if spec.resume_of is not None or spec.resume_session:
        argv.append("--restore-chat-history")
        history = spec.resume_session
        if history and os.path.isabs(history) and history != _history(spec):
            argv += ["--chat-history-file", history]
    return argv + list(spec.args)


def env(spec: JobSpec, uid: int) -> dict[str, str]:
    """No price-list download, no browser."""
    return {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "BROWSER": "true"}


def _history(spec: JobSpec) -> str:
    given = _option(spec.args, "--chat-history-file")
    if given is not None:
        return given if os.path.isabs(given) else os.path.join(spec.workspace, given)
    return os.path.join(spec.workspace, HISTORY)


def _count(text: str) -> int:
    return round(float(text[:-1]) * 1000) if text.endswith("k") else round(float(text))


def note_line(line: bytes, state: ParseState) -> None:
    """One line of aider's output (read back after the exit): usage lines and errors."""
    text = ANSI.sub("", line.decode("utf-8", errors="replace")).rstrip("\r")
    data = state.data
    pending = data.get("pending")
    if isinstance(pending, str):          # an error line wrapped at 80 columns goes on
        pending += text.strip()
        if text.endswith(" "):
            data["pending"] = pending + " "
            return
        data.setdefault("errors", []).append(pending)
        data.pop("pending")
        return
    match = _TOKENS.search(text)
    if match:
        data["sent"] = data.get("sent", 0) + _count(match.group(1))
        data["received"] = data.get("received", 0) + _count(match.group(2))
        data["calls"] = data.get("calls", 0) + 1
        if match.group(4) is not None:
            data["cost"] = float(match.group(4))
        data["errors"] = []               # only errors after the last call count
        return
    if _ERRORS.match(text.strip()):
        if text.endswith(" "):
            data["pending"] = text.strip() + " "
        else:
            data.setdefault("errors", []).append(text.strip())


def report(state: ParseState, spec: JobSpec, exit_code: int | None,
           base: Mapping[str, Any] | None) -> Report:
    """aider's verdict, usage and session (the chat history file) from its output."""
    data = state.data
    errors = list(data.get("errors") or [])
    if isinstance(data.get("pending"), str):
        errors.append(data["pending"].strip())
    error = first_line(errors[0]) if errors else None
    run_usage = None
    if data.get("calls"):
        run_usage = usage(data.get("sent"), data.get("received"), data.get("cost"),
                          data.get("calls"))
    history = _history(spec)
    return Report(error=error, usage=run_usage,
                  session_id=history if os.path.isfile(history) else None)


ADAPTOR = Adaptor(name="aider", build_argv=build_argv, note_line=note_line, report=report,
                  env=env, stdin="null", refuse=refuse)
