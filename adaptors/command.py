"""The `command` adaptor: the prompt is a /bin/sh script (CONTRACT.md, "Jobs").

argv: `<command or /bin/sh> [args...] -c PROMPT`. `args` are extra options for the shell
(e.g. `["-e"]`), placed before `-c` so they stay options. The script runs with cwd = the
workspace and BATCHD_JOB_ID, BATCHD_JOB_DIR, BATCHD_WORKSPACE in its env.

Output: the script's stdout and stderr are both the job's output file itself (an O_APPEND fd),
not a pipe the adaptor copies. Chosen because (1) the file holds exactly the bytes written, in
the order written, with no re-chunking or decoding; (2) nothing can be lost or block: with a
pipe, an adaptor that died would leave the script writing into a pipe nobody reads (EPIPE /
SIGPIPE kills it, or a full pipe stalls it), which is the supervisord failure DESIGN law 5
forbids; (3) no copy loop costs CPU for chatty jobs. The one thing a pipe would give, showing
the output on a terminal, the runtime does by following the file. A shell has no session, so
session_id is always null, and no usage; its verdict is its exit status. stdin is /dev/null
(the prompt is the script, in argv, as the contract says: no prompt file is written).
"""

from __future__ import annotations

from adaptors._runtime import Adaptor
from adaptors._spec import JobSpec

__all__ = ["ADAPTOR", "build_argv"]


def build_argv(spec: JobSpec, binary: str) -> list[str]:
    """`sh [args...] -c PROMPT`."""
    return [binary, *spec.args, "-c", spec.prompt]


ADAPTOR = Adaptor(name="command", build_argv=build_argv, stdin="null", prompt_file=False)
