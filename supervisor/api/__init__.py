"""The api worker: the HTTP API, the dashboard and /metrics over the state dir (CONTRACT.md).

batchd starts it (when `api.listen` is set) after the scheduler and the locks are ready;
it is not critical. docs/API.md tells the whole story: routes, tokens, the SSE stream,
the submit writer, what a crash leaves. Heavy imports (uvicorn, starlette) happen in
`main`, so batchd's preload of this module stays cheap.
"""

from __future__ import annotations

import sys

from supervisor.config import Config
from supervisor.runtime import run_standalone

__all__ = ["NAME", "main"]

NAME = "api"


def main(cfg: Config) -> int:
    """Bind `api.listen`, report ready, serve until SIGTERM; the worker's exit code."""
    from supervisor.api.server import serve

    return serve(cfg)


if __name__ == "__main__":
    sys.exit(run_standalone(NAME, main))
