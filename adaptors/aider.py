"""The `aider` adaptor: Aider in scripting mode, plain-text output.

argv: `aider --message=PROMPT --yes-always --no-pretty --no-stream [--model M]
[--restore-chat-history] [args...]`.

References:
- https://aider.chat/docs/scripting.html ("Scripting aider"): `--message COMMAND` sends one
  message, applies the edits and exits (disables chat mode); `--stream/--no-stream`;
  `--yes` / `--yes-always` "Always say yes to every confirmation" (current aider names it
  `--yes-always`, see aider/args.py); `--model`.
- aider/args.py: `--pretty/--no-pretty` (colour and markdown rendering off for a file),
  `--restore-chat-history` (continue the chat history kept in the workspace).
The prompt is passed as `--message=PROMPT` so a prompt starting with "-" stays a value.
Aider prints plain text (no event stream and no session id): stdout and stderr go straight to
the output file. `resume_session` (any value) asks aider to restore the workspace's chat
history, its only notion of resuming.
"""

from __future__ import annotations

from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The aider command line for `spec`."""
    argv = [binary, f"--message={spec.prompt}", "--yes-always", "--no-pretty", "--no-stream"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv.append("--restore-chat-history")
    return argv + list(spec.args)


ADAPTOR = Adaptor(name="aider", default_binary="aider", build_argv=build_argv)
