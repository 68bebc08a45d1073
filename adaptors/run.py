"""The adaptor entry point: `python -m adaptors.run JOB_DIR` runs one job to its end.

Started by supervisor.scheduler.launch (as `sys.executable -m adaptors.run`, never a console-script
name) in a session of its own; the spec's `adaptor` picks the module from `ADAPTORS`.
Exit status: the agent's (128+N if signal N killed it); 2 bad spec or usage; 3 refused (the
job has a result already, or another adaptor runs it); 126/127 the agent could not start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from adaptors import aider, claude, codex, command, gemini, opencode, q
from adaptors._runtime import EXIT_BAD_SPEC, Adaptor, run_job

__all__ = ["ADAPTORS", "main"]

#: The adaptors by the name a spec (and an agent's config `adaptor:` key) uses.
ADAPTORS: Mapping[str, Adaptor] = {
    module.ADAPTOR.name: module.ADAPTOR
    for module in (command, claude, gemini, codex, aider, opencode, q)
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job folder named on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m adaptors.run JOB_DIR", file=sys.stderr)
        return EXIT_BAD_SPEC
    return run_job(Path(args[0]), ADAPTORS)


if __name__ == "__main__":
    code = main()
    # The job ends when this process does (the scheduler records no terminal state while
    # a process of the job remains, and its webhook waits for that): by now the result is
    # durable, the agent gone and every file closed, so skip the interpreter's teardown
    # (about 15 ms of module finalization) and exit at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
