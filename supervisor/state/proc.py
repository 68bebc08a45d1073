"""Process identity: a pid is only meaningful together with its start time.

The start time is field 22 of /proc/<pid>/stat (clock ticks since boot), an exact
integer that changes when a pid is reused, so (pid, start) names one process for
its whole life. Every pid batchd records is stored with it.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Tagged", "age_of", "alive", "group_members", "has_env", "job_members",
           "job_processes", "kill_job", "start_time", "tagged"]


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None if there is no such process.

    The command name (field 2) is in parentheses and may hold spaces or ')': split after
    the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].split()


def _start_of(fields: list[bytes]) -> int | None:
    try:
        return int(fields[19])  # field 22 overall; fields start at field 3
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if it does not exist."""
    fields = _stat(pid)
    return None if fields is None else _start_of(fields)


def alive(pid: int | None, start: int | None) -> bool:
    """True if the process `pid` exists, is not a zombie, and started at `start`."""
    if not pid or pid <= 0:
        return False
    fields = _stat(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    return start is None or _start_of(fields) == start


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int, *, include_zombies: bool = False) -> list[int]:
    """Pids whose process group is `pgid` (zombies left out unless asked for)."""
    want = str(pgid).encode()
    found: list[int] = []
    for pid in _pids():
        fields = _stat(pid)
        if (fields is not None and len(fields) > 2 and fields[2] == want
                and (include_zombies or fields[0] not in (b"Z", b"X"))):
            found.append(pid)
    return found


def has_env(pid: int, assignment: bytes) -> bool:
    """True if the environment `pid` started with holds `assignment` (b"NAME=value");
    False when it cannot be read (another user's process, or gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return assignment in f.read().split(b"\0")
    except OSError:
        return False


def job_processes(job_dir: str, *, exclude: frozenset[int] = frozenset()) -> list[int]:
    """Live (non-zombie) pids whose environment carries BATCHD_JOB_DIR=`job_dir`.

    Every process of a job inherits that variable from its adaptor, including those that
    left the job's process group (setsid, re-parented), so this finds what killpg misses.
    The job folder is an absolute path under one state dir, so two batchd instances with
    a job of the same id never match each other's processes (BATCHD_JOB_ID would).
    Processes whose environment cannot be read (another user's, when not root) are skipped:
    a process batchd cannot tie to the job is never signalled.
    """
    tag = b"BATCHD_JOB_DIR=" + os.fsencode(job_dir)
    return [pid for pid in _pids()
            if pid not in exclude and has_env(pid, tag) and alive(pid, None)]


def job_members(pgid: int | None, job_dir: str, *, job_id: str | None = None,
                exclude: frozenset[int] = frozenset()) -> list[int]:
    """The live processes of one job: the members of its process group `pgid`, and any
    process anywhere that carries its BATCHD_JOB_DIR (one that left the group).

    With `job_id`, a group member counts only if it carries BATCHD_JOB_ID=<job_id> too:
    a caller that is not the group's leader cannot be sure the pgid was not reused. The
    adaptor, which leads the group and so keeps the pgid alive, passes None.
    """
    found: list[int] = []
    if pgid is not None and pgid > 1:
        tag = None if job_id is None else f"BATCHD_JOB_ID={job_id}".encode()
        found = [p for p in group_members(pgid)
                 if p not in exclude and (tag is None or has_env(p, tag))]
    found += [p for p in job_processes(job_dir, exclude=exclude) if p not in found]
    return found


def kill_job(pgid: int | None, job_dir: str, *, job_id: str | None = None,
             exclude: frozenset[int] = frozenset(), wait: float = 1.0,
             between: Callable[[], None] | None = None) -> tuple[list[int], list[int]]:
    """SIGKILL every process of a job (`job_members`), again and again until none is left
    or `wait` seconds passed; (the pids signalled, those still alive).

    `between` runs before each look (the adaptor reaps its children there: a zombie it
    does not reap would count as alive to nobody, but it must not pile up)."""
    signalled: list[int] = []
    deadline = time.monotonic() + wait
    while True:
        if between is not None:
            between()
        members = job_members(pgid, job_dir, job_id=job_id, exclude=exclude)
        if not members:
            return signalled, []
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            if pid not in signalled:
                signalled.append(pid)
        if time.monotonic() > deadline:
            return signalled, job_members(pgid, job_dir, job_id=job_id, exclude=exclude)
        time.sleep(0.01)


@dataclass(frozen=True)
class Tagged:
    """A live process that carries a job folder of one state dir in its environment."""

    pid: int
    start: int
    job_id: str
    uid: int


def tagged(jobs_dir: str) -> list[Tagged]:
    """Every live process whose BATCHD_JOB_DIR is a folder directly under `jobs_dir` (the
    jobs of this state dir, whoever runs them; another instance's never match). Processes
    whose environment cannot be read are not listed: never signal what cannot be tied."""
    prefix = b"BATCHD_JOB_DIR=" + os.fsencode(os.path.abspath(jobs_dir)) + b"/"
    found: list[Tagged] = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        at = env.find(prefix)
        if at < 0 or (at > 0 and env[at - 1] != 0):
            continue
        end = env.find(b"\0", at)
        job_id = env[at + len(prefix):end if end >= 0 else len(env)]
        fields = _stat(pid)
        if not job_id or b"/" in job_id or not fields or fields[0] in (b"Z", b"X"):
            continue
        start = _start_of(fields)
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if start is not None:
            found.append(Tagged(pid, start, job_id.decode(errors="replace"), uid))
    return found


@functools.cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


def age_of(start: int, now: float | None = None) -> float:
    """Seconds since a process with start time `start` (clock ticks since boot) began."""
    began = _boot_time() + start / os.sysconf("SC_CLK_TCK")
    return (time.time() if now is None else now) - began
