"""Process-level: the scheduler's fork server under a real batchd, SIGKILLed, and its end."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from supervisor.scheduler import spawner
from supervisor.state.proc import alive
from tests.helpers import until
from tests.proc.harness import Env, _ppid


def _servers(parent: int) -> list[int]:
    """The fork servers whose parent is `parent` (a scheduler)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or _ppid(int(name)) != parent:
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if spawner.__file__.encode() in cmdline.split(b"\0"):
            found.append(int(name))
    return found


def test_jobs_run_with_the_fork_server_killed_and_none_outlives_its_scheduler(
        env: Env) -> None:
    """A real batchd: its scheduler has one fork server, and a job runs through it. The
    server SIGKILLed, the next job still runs (launched by a fork of the scheduler, or by
    a server started again), parented by no worker. batchd SIGKILLed (its scheduler with
    it): no fork server of that scheduler is left, and the job runs on."""
    env.start()
    scheduler = env.scheduler_pid
    server = until("the fork server", lambda: _servers(scheduler))[0]
    env.submit("one", "echo one")
    env.wait_state("one", "completed")
    entry = env.entry("one")
    assert entry is not None
    os.kill(server, signal.SIGKILL)
    until("the killed server gone", lambda: not alive(server, None))
    env.submit("two", "sleep 30")
    env.wait_state("two", "running")
    two = env.entry("two")
    assert two is not None
    assert (scheduler, "one\n") == (env.scheduler_pid, env.output("one"))
    assert _ppid(int(two["pid"])) not in (scheduler, server, None)
    seen = set(_servers(scheduler))
    env.kill9()
    until("every fork server of the dead scheduler gone",
          lambda: not any(alive(pid, None) for pid in seen))
    assert [int(two["pid"])] == [p for p in env.job_pids("two") if p == int(two["pid"])]
