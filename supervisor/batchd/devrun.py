"""`make run`: batchd in the foreground on the built-in default config, its state in ./state.

Sets BATCHD_STATE_DIR to `state/` under the current directory (so a `batchctl` started
with the same variable finds it), prints where the state is and a batchctl line to try,
then runs batchd until Ctrl-C (SIGINT: batchd stops its workers and exits 0).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from supervisor.batchd import serve
from supervisor.config import default_config

__all__ = ["main"]


def _batchctl() -> str:
    """The batchctl beside this interpreter, relative to the current folder when inside it."""
    path = Path(sys.executable).parent / "batchctl"
    try:
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) \
            else str(path)
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Start batchd on the built-in default config with state in ./state; its exit code."""
    state = Path.cwd() / "state"
    os.environ["BATCHD_STATE_DIR"] = str(state)
    cfg = default_config(os.environ)
    ctl = _batchctl()
    print(f"batchd (dev run): state in {cfg.state_dir}, built-in default configuration\n"
          f"try, in another terminal of this folder:\n"
          f"  export BATCHD_STATE_DIR={shlex.quote(str(state))}; {ctl} status\n"
          f"  {ctl} submit --agent shell --prompt 'echo hello'\n"
          f"Ctrl-C stops batchd (running jobs are left running).", flush=True)
    return serve(cfg, config_path=None)


if __name__ == "__main__":
    sys.exit(main())
