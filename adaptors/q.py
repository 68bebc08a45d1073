"""The `q` adaptor: Amazon Q Developer CLI chat, non-interactive, plain-text output.

argv: `q chat --no-interactive --trust-all-tools [--model M] [--resume] [args...] -- PROMPT`.

References:
- Amazon Q Developer user guide, "Amazon Q CLI command reference"
  (https://docs.aws.amazon.com/amazonq/latest/qdeveloper-ug/command-line-reference.html),
  `q chat [OPTIONS] [INPUT]`: `--no-interactive` "Print the first response to STDOUT without
  interactive mode. This will fail if the prompt requests permissions to use a tool, unless
  --trust-all-tools is also used"; `--trust-all-tools`; `--resume/-r` "Resume the previous
  conversation from this directory"; the agent config's `model` / the `--model` option.
- The CLI is clap-based (aws/amazon-q-developer-cli, chat/cli.rs), so `--` ends the options and
  the prompt is taken as INPUT even when it starts with "-".
Q prints plain text and has no session id to report: `--resume` continues the conversation kept
for the workspace, so `resume_session` (any value) only switches that flag on. stdout and
stderr go straight to the output file.
"""

from __future__ import annotations

from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """The q command line for `spec`."""
    argv = [binary, "chat", "--no-interactive", "--trust-all-tools"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.resume_session:
        argv.append("--resume")
    return [*argv, *spec.args, "--", spec.prompt]


ADAPTOR = Adaptor(name="q", default_binary="q", build_argv=build_argv)
