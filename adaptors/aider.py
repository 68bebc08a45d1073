"""The `aider` adaptor: Aider in scripting mode, plain-text output.

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
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
