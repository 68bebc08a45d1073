"""The `command` adaptor: the prompt is a /bin/sh script (CONTRACT.md, "Jobs").

The long form (verified version, argv, exit codes, defaults) is in docs/AGENTS.md.
"""

from __future__ import annotations

from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """`sh [args...] -c PROMPT`."""
    return [binary, *spec.args, "-c", spec.prompt]


ADAPTOR = Adaptor(name="command", build_argv=build_argv, stdin="null", prompt_file=False)
