"""The repository lock table: FIFO queues and all-or-nothing grants, as functions over plain data.

Pure: no file, no clock, no process. The rules (FIFO per repository, all-or-nothing
grants, idempotent acquire/release) and the record are in docs/LOCKS.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.state.jobs import valid_job_id

__all__ = [
    "ACQUIRE",
    "GRANTED",
    "RELEASE",
    "Lock",
    "Table",
    "Want",
    "acquire",
    "acquire_request",
    "drop",
    "exclusive_for",
    "from_record",
    "grant",
    "granted_hint",
    "release",
    "release_request",
    "to_record",
    "unavailable",
]

#: Request kinds: into locks/inbox (acquire, release) and scheduler/inbox (the grant hint).
ACQUIRE = "acquire"
RELEASE = "release"
GRANTED = "lock_granted"


@dataclass(frozen=True)
class Lock:
    """A held repository lock: who holds it, since when (ISO), and whether for its whole run."""

    job: str
    since: str
    exclusive: bool = False


@dataclass(frozen=True)
class Want:
    """A waiting job's request: its repositories, exclusivity, place in line, submit time."""

    repos: tuple[str, ...]
    exclusive: bool = False
    seq: int = 0
    created_at: str | None = None


@dataclass
class Table:
    """The whole lock state: held locks (repo -> Lock, grant order), FIFO queues, requests."""

    held: dict[str, Lock] = field(default_factory=dict)
    waiting: dict[str, list[str]] = field(default_factory=dict)
    wants: dict[str, Want] = field(default_factory=dict)

    def holder(self, repo: str) -> str | None:
        """The job holding `repo`, or None when it is free."""
        lock = self.held.get(repo)
        return None if lock is None else lock.job

    def holds(self, job: str) -> list[str]:
        """The repositories `job` holds, in grant order."""
        return [repo for repo, lock in self.held.items() if lock.job == job]

    def knows(self, job: str) -> bool:
        """True if `job` holds a lock or waits for one."""
        return job in self.wants or any(lock.job == job for lock in self.held.values())

    def jobs(self) -> set[str]:
        """Every job the table mentions (holding or waiting)."""
        return {lock.job for lock in self.held.values()} | set(self.wants)


# -- the operations ---------------------------------------------------------------------------

def _key(table: Table, job: str) -> tuple[int, str]:
    return (table.wants[job].seq, job)


def acquire(table: Table, job: str, want: Want) -> bool:
    """Queue `job` for `want.repos` in seq order; False (nothing changed) if it is known."""
    if table.knows(job) or not want.repos:
        return False
    table.wants[job] = want
    mine = (want.seq, job)
    for repo in want.repos:
        queue = table.waiting.setdefault(repo, [])
        if not queue or _key(table, queue[-1]) <= mine:
            queue.append(job)            # the usual case: the newest request
        else:
            bisect.insort(queue, job, key=lambda other: _key(table, other))
    return True


def release(table: Table, job: str) -> bool:
    """Free every lock `job` holds and take it out of every queue; False if it was unknown."""
    changed = False
    for repo in table.holds(job):
        del table.held[repo]
        changed = True
    want = table.wants.pop(job, None)
    if want is not None:
        changed = True
        for repo in want.repos:
            queue = table.waiting.get(repo, [])
            if job in queue:
                queue.remove(job)
            if not queue:
                table.waiting.pop(repo, None)
    return changed


def drop(table: Table, jobs: Iterable[str]) -> list[str]:
    """Release each of `jobs` (terminal or vanished ones); those that were in the table."""
    return [job for job in jobs if release(table, job)]


def _first(table: Table, repo: str) -> str | None:
    queue = table.waiting.get(repo)
    return queue[0] if queue else None


def grant(table: Table, now: str, available: Callable[[str], bool] = lambda repo: True
          ) -> list[str]:
    """Give every job that can have ALL its repositories now their locks; the jobs granted.

    Only a job first in a queue can be granted, so only the heads are looked at, oldest
    request first. One pass finds every grant: a job that becomes first in a queue during
    the pass became so because the job before it was granted that very repository.
    """
    heads = sorted({queue[0] for queue in table.waiting.values() if queue},
                   key=lambda job: _key(table, job))
    granted = []
    for job in heads:
        want = table.wants[job]
        if not all(available(repo) and repo not in table.held and _first(table, repo) == job
                   for repo in want.repos):
            continue
        for repo in want.repos:
            table.held[repo] = Lock(job, now, want.exclusive)
            queue = table.waiting[repo]
            queue.pop(0)
            if not queue:
                del table.waiting[repo]
        del table.wants[job]
        granted.append(job)
    return granted


def exclusive_for(entry: Mapping[str, Any], repositories: Mapping[str, Any]) -> bool:
    """Whether a job holds its locks for its whole run: the scheduler's decision recorded
    in its entry (`lock_exclusive`), else its own `exclusive` or any of its repositories'
    (`repositories`: name -> RepoConfig; an unknown name counts as not exclusive)."""
    decided = entry.get("lock_exclusive")
    if isinstance(decided, bool):
        return decided
    if entry.get("exclusive") is True:
        return True
    return any(getattr(repositories.get(str(name)), "exclusive", False) is True
               for name in entry.get("repos") or [])


def unavailable(table: Table, known: Container[str]) -> list[str]:
    """Repositories named by held locks or queues that are not in `known`, sorted."""
    return sorted({repo for repo in [*table.held, *table.waiting] if repo not in known})


# -- the record (locks/state.json) ------------------------------------------------------------

def to_record(table: Table) -> dict[str, Any]:
    """The table as the WORKER_STATE record's body: what is held and what each waiting job
    wants (the FIFO queues follow from the wants' seq; what is unavailable from the
    repositories known now, which every reader knows better than this file)."""
    return {
        "worker": "locks",
        "held": [{"repo": repo, "job": lock.job, "since": lock.since,
                  "exclusive": lock.exclusive} for repo, lock in table.held.items()],
        "wants": {job: {"repos": list(w.repos), "exclusive": w.exclusive, "seq": w.seq,
                        "created_at": w.created_at} for job, w in table.wants.items()},
    }


def _queues(wants: Mapping[str, Want]) -> dict[str, list[str]]:
    """The FIFO queue of each repository: its waiting jobs by (seq, job id)."""
    queues: dict[str, list[str]] = {}
    for job in sorted(wants, key=lambda j: (wants[j].seq, j)):
        for repo in wants[job].repos:
            queues.setdefault(repo, []).append(job)
    return queues


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _held(raw: object) -> dict[str, Lock] | str:
    if not isinstance(raw, list):
        return "'held' must be a list"
    held: dict[str, Lock] = {}
    for i, lock in enumerate(raw):
        if not (isinstance(lock, dict)
                and all(isinstance(lock.get(k), str) for k in ("repo", "job", "since"))):
            return f"held[{i}] must be an object with string repo, job and since"
        if not isinstance(lock.get("exclusive", False), bool):
            return f"held[{i}].exclusive must be true or false"
        if lock["repo"] in held:
            return f"held[{i}]: repository {lock['repo']!r} is held twice"
        held[lock["repo"]] = Lock(lock["job"], lock["since"], lock.get("exclusive", False))
    return held


def _want(job: str, raw: object) -> Want | str:
    if not isinstance(raw, dict):
        return f"wants[{job!r}] must be an object"
    repos, seq, created = raw.get("repos"), raw.get("seq"), raw.get("created_at")
    if not _is_str_list(repos) or not repos or len(set(repos)) != len(repos):
        return f"wants[{job!r}].repos must be a non-empty list of distinct names"
    if not isinstance(raw.get("exclusive"), bool):
        return f"wants[{job!r}].exclusive must be true or false"
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"wants[{job!r}].seq must be an integer"
    if created is not None and not isinstance(created, str):
        return f"wants[{job!r}].created_at must be a string or null"
    return Want(tuple(repos), raw["exclusive"], seq, created)


def _consistent(table: Table) -> str | None:
    """None if queues and wants describe the same waiting jobs, else the first mismatch."""
    for repo, queue in table.waiting.items():
        if not queue:
            return f"waiting[{repo!r}] is empty"
        if len(set(queue)) != len(queue):
            return f"waiting[{repo!r}] lists a job twice"
        for job in queue:
            want = table.wants.get(job)
            if want is None or repo not in want.repos:
                return f"waiting[{repo!r}]: job {job!r} has no matching entry in 'wants'"
    for job, want in table.wants.items():
        if any(job not in table.waiting.get(repo, []) for repo in want.repos):
            return f"wants[{job!r}]: the job is missing from a queue it asks for"
        if any(lock.job == job for lock in table.held.values()):
            return f"job {job!r} both holds locks and waits"
    return None


def from_record(rec: Mapping[str, Any]) -> Table | str:
    """The table a state record holds, or a sentence saying what is wrong with it.

    The queues are rebuilt from `wants` (keys of an earlier version, `waiting` and
    `unavailable`, are ignored: both follow from the rest)."""
    held = _held(rec.get("held"))
    if isinstance(held, str):
        return held
    raw_wants = rec.get("wants", {})
    if not isinstance(raw_wants, dict):
        return "'wants' must be an object"
    wants: dict[str, Want] = {}
    for job, raw in raw_wants.items():
        if not valid_job_id(job):
            return f"wants: {job!r} is not a job id"
        want = _want(job, raw)
        if isinstance(want, str):
            return want
        wants[job] = want
    table = Table(held, _queues(wants), wants)
    problem = _consistent(table)
    return table if problem is None else problem


# -- the requests --------------------------------------------------------------------------------

def acquire_request(job: str, repos: Iterable[str], *, exclusive: bool, seq: int,
                    created_at: str) -> dict[str, Any]:
    """The REQUEST body asking the locks worker for `repos` (id acquire-<job>: a replay is
    the same file)."""
    return {"id": f"acquire-{job}", "kind": ACQUIRE, "job": job, "repos": list(repos),
            "exclusive": exclusive, "seq": seq, "created_at": created_at}


def release_request(job: str, *, created_at: str) -> dict[str, Any]:
    """The REQUEST body freeing everything `job` holds or waits for (id release-<job>)."""
    return {"id": f"release-{job}", "kind": RELEASE, "job": job, "created_at": created_at}


def granted_hint(job: str, *, created_at: str) -> dict[str, Any]:
    """The hint into scheduler/inbox that `job` now holds its locks (id granted-<job>)."""
    return {"id": f"granted-{job}", "kind": GRANTED, "job": job, "created_at": created_at}
