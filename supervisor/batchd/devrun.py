"""`make run`: batchd in the foreground on the built-in default config, its state in ./state.

Sets BATCHD_STATE_DIR to `state/` under the current directory (so a `batchctl` started
with the same variable finds it), turns the API on at 127.0.0.1 (port 8765, or a free one
when 8765 is taken), makes a fresh admin token named `devrun` (as `batchctl token add`
does), prints where the state is, the dashboard's address, the token and a batchctl line
to try, then runs batchd until Ctrl-C (SIGINT: batchd stops its workers and exits 0).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import sys
from pathlib import Path

from supervisor.batchd import serve
from supervisor.config import ApiConfig, default_config
from supervisor.state.layout import Layout
from supervisor.state.tokens import TokenError, add, revoke, tokens_path

#: The port `make run` asks for first.
DEV_PORT = 8765

__all__ = ["main"]


def _batchctl() -> str:
    """The batchctl beside this interpreter, relative to the current folder when inside it."""
    path = Path(sys.executable).parent / "batchctl"
    try:
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) \
            else str(path)
    except ValueError:
        return str(path)


def free_port(preferred: int = DEV_PORT) -> int:
    """`preferred` when nothing listens on 127.0.0.1 there, else a free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            got: int = s.getsockname()[1]
            return got
    raise OSError("no free port on 127.0.0.1")


def dev_token(path: Path) -> str:
    """A fresh admin token named `devrun` (the previous one, if any, is revoked)."""
    try:
        revoke(path, "devrun")
    except TokenError:
        pass
    return add(path, "devrun", "admin")


def main(argv: list[str] | None = None) -> int:
    """Start batchd on the built-in default config with state in ./state; its exit code."""
    state = Path.cwd() / "state"
    os.environ["BATCHD_STATE_DIR"] = str(state)
    port = free_port()
    cfg = dataclasses.replace(default_config(os.environ),
                              api=ApiConfig(listen=f"127.0.0.1:{port}"))
    token = dev_token(tokens_path(cfg, Layout(cfg.state_dir)))
    ctl = _batchctl()
    print(f"batchd (dev run): state in {cfg.state_dir}, built-in default configuration\n"
          f"dashboard: http://127.0.0.1:{port}/  (admin token, shown once: {token})\n"
          f"try, in another terminal of this folder:\n"
          f"  export BATCHD_STATE_DIR={shlex.quote(str(state))}; {ctl} status\n"
          f"  {ctl} submit --agent shell --prompt 'echo hello'\n"
          f"  curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/v1/status\n"
          f"Ctrl-C stops batchd (running jobs are left running).", flush=True)
    return serve(cfg, config_path=None)


if __name__ == "__main__":
    sys.exit(main())
