"""Helpers the tests share: polling until a condition holds, real git repositories, a real
batchd with the real batchctl (`Rig`), a disk that fails writes (`BadDisk`) and a file
system that notes its fsyncs (`CountingFS`)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from supervisor.state.fs import OsFS

__all__ = ["DEADLINE", "BadDisk", "CountingFS", "Rig", "fill", "git", "make_remote", "push_commit",
           "until"]

ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")

#: How long a test waits for a real process to do something before it fails.
DEADLINE = 30.0


class CountingFS(OsFS):
    """The real file system, noting each fsync in order: "file", or the folder's name."""

    def __init__(self) -> None:
        self.syncs: list[str] = []

    def fsync(self, fd: int) -> None:
        self.syncs.append("file")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self.syncs.append(os.path.basename(path))
        super().fsync_dir(path)


def until(what: str, check: Callable[[], T], deadline: float = DEADLINE,
          interval: float = 0.01) -> T:
    """Poll `check()` until it returns something truthy and return that; fail naming
    `what` when `deadline` seconds pass first."""
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(interval)


class BadDisk:
    """Makes the state layer's real FS (state.fs.REAL, which every write goes through
    unless given another) fail its data writes and fsyncs with `error` (ENOSPC: full;
    EIO: failing) while `broken` is True, and the next `failures` calls; `refused`
    counts the failed calls. Installed with pytest's monkeypatch, so the patch ends with
    the test."""

    def __init__(self, monkeypatch: Any, error: int) -> None:
        from supervisor.state.fs import REAL, OsFS
        self.error = error
        self.broken = False
        self.failures = 0
        self.refused = 0
        real = OsFS()
        for name in ("write", "pwrite", "fsync", "fdatasync"):
            monkeypatch.setattr(REAL, name, self._guard(getattr(real, name)))

    def _guard(self, call: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            if self.broken or self.failures > 0:
                self.failures = max(0, self.failures - 1)
                self.refused += 1
                raise OSError(self.error, os.strerror(self.error))
            call(*args)
        return guarded


def fill(path: Path) -> None:
    """Write zeros to `path` until its file system is full (ENOSPC), to the last byte."""
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 20)
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    os.sync()


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with a test identity; its stdout, stripped (fails the test on an error)."""
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                          "-c", "init.defaultBranch=main", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_remote(root: Path, name: str) -> tuple[Path, Path]:
    """(bare remote, its work tree): HEAD of the remote is `trunk`; `main` also exists."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "which").write_text(f"{name} main\n")
    git("add", "which", cwd=work)
    git("commit", "-q", "-m", "on main", cwd=work)
    git("checkout", "-q", "-b", "trunk", cwd=work)
    (work / "which").write_text(f"{name} trunk\n")
    git("commit", "-q", "-am", "on trunk", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


def push_commit(work: Path, text: str, branch: str = "trunk") -> str:
    """Commit `text` into `which` on `branch` and push it; the new commit's sha."""
    git("checkout", "-q", branch, cwd=work)
    (work / "which").write_text(text)
    git("commit", "-q", "-am", text.strip(), cwd=work)
    git("push", "-q", "origin", branch, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


#: The config a Rig's batchd starts with, before the test's own lines (agents...).
RIG_CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: 4, heartbeat_interval: 0.5, stale_after: 5, dead_after: 20,
            kill_grace: 1}}
workers:
  scheduler: {{startsecs: 0.1, stopwaitsecs: 5}}
  locks: {{startsecs: 0.1, stopwaitsecs: 5}}
  reaper: {{startsecs: 0.1, stopwaitsecs: 5}}
  callbacks: {{startsecs: 0.1, stopwaitsecs: 5}}
"""


class Rig:
    """A real batchd (`python -m supervisor.batchd`, launcher direct) on a config of its own
    in `root`, and the real batchctl (`python -m supervisor.ctl`) to drive it."""

    def __init__(self, root: Path, extra_config: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.state = root / "state"
        self.log = root / "batchd.log"
        self.config = root / "batchd.yaml"
        self.config.write_text(RIG_CONFIG.format(state=self.state, log=self.log)
                               + extra_config)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.batchd: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start batchd; return once its scheduler has reported ready."""
        self.batchd = subprocess.Popen(
            [sys.executable, "-m", "supervisor.batchd", "-c", str(self.config)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        batchd = self.batchd

        def ready() -> bool:
            assert batchd.poll() is None, f"batchd exited {batchd.returncode}"
            return (self.state / "ready" / "scheduler.json").exists()

        until("the scheduler to report ready", ready, deadline=60.0)

    def ctl(self, *argv: str, timeout: float = 120.0,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run `batchctl -c CONFIG ARGV...`."""
        return subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(self.config),
                               *argv], env=self.env, capture_output=True, input=stdin,
                              timeout=timeout, check=False, cwd=ROOT)

    def json(self, *argv: str) -> Any:
        """`batchctl ARGV... --json`, which must exit 0: its document."""
        done = self.ctl(*argv, "--json")
        assert 0 == done.returncode, done.stderr.decode()
        return json.loads(done.stdout)

    def submit(self, *argv: str, stdin: bytes | None = None) -> str:
        """`batchctl submit ARGV...`, which must exit 0: the job id."""
        done = self.ctl("submit", *argv, stdin=stdin)
        assert 0 == done.returncode, done.stderr.decode()
        return done.stdout.decode().strip()

    def finished(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """The job's record once it is terminal (`batchctl wait`)."""
        done = self.ctl("wait", job_id, "--timeout", f"{timeout}s", "--json",
                        timeout=timeout + 30)
        assert done.returncode in (0, 1), done.stderr.decode()
        [record] = json.loads(done.stdout)
        assert isinstance(record, dict)
        return record

    def output(self, job_id: str) -> bytes:
        done = self.ctl("output", job_id)
        assert 0 == done.returncode, done.stderr.decode()
        return done.stdout

    def stop(self) -> None:
        """SIGTERM batchd (jobs keep running: the tests wait for theirs) and reap it."""
        if self.batchd is not None and self.batchd.poll() is None:
            self.batchd.send_signal(signal.SIGTERM)
            try:
                self.batchd.wait(30)
            except subprocess.TimeoutExpired:
                self.batchd.kill()
                self.batchd.wait(30)


def submitted_jobs(layout: Any) -> list[dict[str, Any]]:
    """Every job waiting for the scheduler, whichever door it came by: the submit
    requests in its inbox (batchctl), then the records of the api's submission log."""
    from supervisor.state.layout import REQUEST, read_record
    from supervisor.state.sublog import read_log

    inbox = layout.inbox("scheduler")
    jobs: list[dict[str, Any]] = []
    for name in sorted(os.listdir(inbox)) if inbox.exists() else []:
        if not name.endswith(".json"):
            continue
        rec = read_record(REQUEST, inbox / name, owner=False)
        if isinstance(rec, dict) and rec.get("kind") == "submit":
            jobs += rec["jobs"]
    for rec in read_log(layout.sublog_dir).pending(0):
        jobs += rec["jobs"]
    return jobs
