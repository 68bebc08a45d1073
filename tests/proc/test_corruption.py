"""Every kind of state file corrupted in turn (truncated, emptied, garbage, a folder in its
place) under a running batchd, then its owner made to read it: the file is quarantined or
rewritten (or `status` names it as degraded), no worker is left in a crash loop, `status`,
`jobs` and `stats` still answer, and a new job still runs.

`make test` corrupts every file one way, the way drawn from a seed printed with the test
(BATCHD_CORRUPTION_SEED replays it); `make chaos` runs all four ways for every file.
docs/CHAOS.md lists the files and what "handled" means for each.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.view import read_workers
from tests.helpers import make_remote, until
from tests.proc.harness import Env

WAYS = ("truncated", "emptied", "garbage", "folder")
GARBAGE = b"\x00\xff{not json\n" * 16

#: Callbacks to a port nobody listens on, retried only after an hour: the event stays in
#: the outbox (callbacks/outbox/<event id>.json) for the test to corrupt.
EXTRA = """\
callbacks: {retry_schedule: [1h], timeout: 2s}
"""


@dataclass(frozen=True)
class Target:
    """One kind of state file: where it is, who must read it after the damage (a worker
    SIGKILLed and restarted by batchd, batchd itself SIGKILLed and started, or a batchctl
    command), and what an operator does about what the product reports (`remedy`)."""

    name: str
    find: Callable[[Env], Path]
    owner: str                      # batchd, a worker's name, or "ctl"
    ctl: tuple[str, ...] = ()       # the batchctl command that reads it (owner "ctl")
    remedy: tuple[str, ...] = ()    # an operator's command after the damage was reported
    lock_file: bool = False         # empty and never written: only a folder matters


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(p for p in folder.glob(pattern) if CORRUPT_MARK not in p.name)
    assert found, f"no {pattern} in {folder}"
    return found[-1]


#: In an order that keeps what later targets need: the job holding the repository (its
#: sentinel, the wants page of the job behind it) before the registry and the WAL.
TARGETS: tuple[Target, ...] = (
    Target("batchd.pid", lambda e: e.state / "batchd.pid", "batchd"),
    Target("batchd.lock", lambda e: e.state / "batchd.lock", "batchd", lock_file=True),
    Target("workers.json", lambda e: e.state / "workers.json", "batchd"),
    Target("startup-log.json", lambda e: e.state / "startup-log.json", "batchd"),
    Target("ready/scheduler.json", lambda e: e.state / "ready" / "scheduler.json",
           "scheduler"),
    Target("ready/locks.json", lambda e: e.state / "ready" / "locks.json", "locks"),
    Target("scheduler/paused.json", lambda e: e.state / "scheduler" / "paused.json",
           "scheduler", remedy=("resume",)),
    Target("scheduler/submit.lock", lambda e: e.state / "scheduler" / "submit.lock", "ctl",
           ctl=("submit", "--agent", "shell", "--prompt", "true"), lock_file=True),
    Target("locks/state.json", lambda e: e.state / "locks" / "state.json", "locks"),
    Target("locks/wants page", lambda e: _one(e.state / "locks" / "wants", "*.json"),
           "locks"),
    Target("reaper/state.json", lambda e: e.state / "reaper" / "state.json", "reaper"),
    Target("callbacks/outbox record",
           lambda e: _one(e.state / "callbacks" / "outbox", "*.json"), "callbacks"),
    Target("jobs/<id>/sentinel.json",
           lambda e: e.state / "jobs" / "holder" / "sentinel.json", "scheduler"),
    Target("repos.json", lambda e: e.state / "repos.json", "ctl", ctl=("status",),
           remedy=("repo", "remove", "nobody-has-this")),
    Target("scheduler/wal segment", lambda e: _one(e.state / "scheduler" / "wal", "*.wal"),
           "scheduler"),
)


def _corrupt(path: Path, way: str) -> bytes | None:
    """Damage `path` the given way (plain writes: the damage is the point); the bytes left
    there (None for a folder)."""
    if way == "folder":
        path.unlink()
        path.mkdir()
        (path / "inside").write_bytes(b"x")
        return None
    data = {"truncated": path.read_bytes()[: path.stat().st_size // 2],
            "emptied": b"", "garbage": GARBAGE}[way]
    with open(path, "r+b") as f:    # in place, as a torn write or a bad disk would
        f.write(data)
        f.truncate(len(data))
    return data


class Corruption:
    """A running batchd with one of every state file, and the checks after each damage."""

    def __init__(self, env: Env, tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.n = 0

    def setup(self) -> None:
        """Jobs in every state that owns a file: an exclusive repository held by a running
        job with one waiting behind it (locks/state.json, a wants page, a sentinel), an
        undeliverable callback (an outbox record), a pause and resume (paused.json)."""
        e = self.env
        bare, _ = make_remote(self.tmp / "remotes", "ex")
        e.start()
        e.ctl("repo", "add", "ex", str(bare), "--exclusive")
        e.submit("holder", "sleep 600", "--repo", "ex")
        e.wait_state("holder", "running")
        e.submit("waiter", "true", "--repo", "ex")
        e.submit("called", "true", "--callback", "http://127.0.0.1:9/hook")
        e.wait_state("called", "completed")
        e.ctl("pause")
        e.ctl("resume")
        until("one of every target", lambda: all(self._exists(t) for t in TARGETS))

    def _exists(self, t: Target) -> bool:
        try:
            return t.find(self.env).is_file()
        except AssertionError:
            return False

    def check(self, t: Target, way: str) -> list[str]:
        """Corrupt `t` the `way`, make its owner read it, and say what went wrong."""
        e = self.env
        path = t.find(e)
        left = _corrupt(path, way)
        self._provoke(t)
        problems: list[str] = []
        status = e.ctl("status", "--json", check=False)
        if status.returncode != 0:
            return [f"status exit {status.returncode}: {status.stderr[-300:]}"]
        degraded = json.loads(status.stdout)["degraded"]
        if not self._handled(t, path, left, degraded):
            problems.append(f"{path} left {way}, not quarantined, rewritten nor named in "
                            f"status (degraded: {degraded})")
        for args in (("jobs", "--json"), ("stats", "--json"), ("workers", "--json")):
            run = e.ctl(*args, check=False)
            if run.returncode != 0 or "Traceback" in run.stderr:
                problems.append(f"{args[0]} exit {run.returncode}: {run.stderr[-300:]}")
        if t.remedy:
            e.ctl(*t.remedy, check=False)
            after = json.loads(e.ctl("status", "--json").stdout)["degraded"]
            if path.is_dir() or any(path.name in note for note in after):
                problems.append(f"after `{' '.join(t.remedy)}`: {path} still reported "
                                f"({after})")
        problems += self._workers_settled()
        self.n += 1
        job = f"after-{self.n}"
        e.submit(job, "echo fine")
        try:
            e.wait_state(job, "completed", deadline=30.0)
        except AssertionError:
            problems.append(f"a new job did not complete: {e.state_of(job)}")
        return problems

    def _provoke(self, t: Target) -> None:
        e = self.env
        if t.owner == "batchd":
            e.kill9()
            e.start()
        elif t.owner == "ctl":
            e.ctl(*t.ctl, check=False)
        else:
            pid = self._workers()[t.owner]["pid"]
            os.kill(pid, signal.SIGKILL)

            def restarted() -> bool:
                w = self._workers().get(t.owner, {})
                return w.get("pid") != pid and w.get("state") == "RUNNING"
            until(f"{t.owner} restarted", restarted)
        time.sleep(0.5)                 # the new owner's first reads and writes

    def _workers(self) -> dict[str, dict[str, Any]]:
        """workers.json by name, read-only in this process (batchctl `workers` is one of the
        readers checked once per damage; polling it would cost a Python start each time)."""
        return {str(w.get("name")): w for w in read_workers(self.env.layout)}

    def _handled(self, t: Target, path: Path, left: bytes | None,
                 degraded: list[str]) -> bool:
        """Moved aside (NAME.corrupted.<ts>), rewritten by its writer, or named by status."""
        quarantined = any(p.name.startswith(path.name + CORRUPT_MARK)
                          for p in path.parent.iterdir())
        if any(path.name in note or str(path) in note for note in degraded):
            return True                 # reported: the operator's remedy moves it aside
        if path.is_dir():
            return False
        if quarantined or (t.lock_file and path.is_file()):
            return True
        return path.is_file() and left is not None and path.read_bytes() != left

    def _workers_settled(self) -> list[str]:
        """Every worker RUNNING, twice, 1.5 s apart, with no restart between: no crash loop."""
        def rows() -> dict[str, tuple[str, int]]:
            got = self._workers()
            return {n: (str(got.get(n, {}).get("state")), int(got.get(n, {}).get("restarts")
                                                              or 0))
                    for n in ("scheduler", "locks", "reaper", "callbacks")}
        try:
            until("every worker RUNNING",
                  lambda: all(s == "RUNNING" for s, _ in rows().values()), 30.0)
        except AssertionError:
            return [f"workers not all RUNNING: {rows()}"]
        first = rows()
        time.sleep(1.5)
        second = rows()
        return [] if first == second else [f"a worker restarted by itself: {first} -> {second}"]


def _seed() -> int:
    given = os.environ.get("BATCHD_CORRUPTION_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 10**9)


def _run(env: Env, tmp: Path, plan: list[tuple[Target, str]]) -> None:
    c = Corruption(env, tmp)
    c.setup()
    found = {f"{t.name} {way}": c.check(t, way) for t, way in plan}
    bad = {k: v for k, v in found.items() if v}
    assert {} == bad, json.dumps(bad, indent=1)


@pytest.mark.timeout(600)
def test_every_state_file_corrupted_one_way_is_survived(
        env_corrupt: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each kind of state file damaged one way (drawn from a printed seed) under a running
    batchd and read by its owner: handled (quarantined, rewritten or reported), no worker in
    a crash loop, the readers answer, a new job completes."""
    seed = _seed()
    rng = random.Random(seed)
    plan = [(t, rng.choice(WAYS)) for t in TARGETS]
    with capsys.disabled():
        print(f"\ncorruption seed {seed} (BATCHD_CORRUPTION_SEED={seed}): "
              + ", ".join(f"{t.name} {w}" for t, w in plan), flush=True)
    _run(env_corrupt, tmp_path, plan)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("way", WAYS)
def test_every_state_file_corrupted_every_way_is_survived(
        env_corrupt: Env, tmp_path: Path, way: str) -> None:
    """`make chaos`: every kind of state file damaged `way`, in turn, same checks."""
    _run(env_corrupt, tmp_path, [(t, way) for t in TARGETS])


@pytest.fixture
def env_corrupt(tmp_path: Path) -> Any:
    e = Env(tmp_path, extra=EXTRA)
    yield e
    e.close()
