"""The repository lock table: FIFO queues and all-or-nothing grants, as functions over plain data.

Pure: no file, no clock, no process. The rules (FIFO per repository, all-or-nothing
grants, idempotent acquire/release) and the records (the held locks; the waiting jobs'
wants, kept in pages) are in docs/LOCKS.md; state.lockfiles reads and writes them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.state.jobs import JOB_ID_RE, valid_job_id

__all__ = [
    "ACQUIRE",
    "GRANTED",
    "GRANTED_HINT_PREFIX",
    "NEXT",
    "NEXT_HINT_PREFIX",
    "REAP",
    "RELEASE",
    "Lock",
    "Table",
    "Want",
    "acquire",
    "acquire_request",
    "blocked",
    "drop",
    "exclusive_for",
    "from_parts",
    "from_record",
    "grant",
    "granted_hint",
    "held_record",
    "is_lock_hint",
    "next_hint",
    "next_in_line",
    "page_record",
    "reap_request",
    "release",
    "release_request",
    "to_record",
    "unavailable",
    "wants_from_record",
]

#: Request kinds: into locks/inbox (acquire, release) and scheduler/inbox (the grant hint).
ACQUIRE = "acquire"
RELEASE = "release"
REAP = "reap"
GRANTED = "lock_granted"
NEXT = "lock_next"


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


def next_in_line(table: Table) -> set[str]:
    """The jobs first in line for a repository that another job holds for its whole run
    (an exclusive lock: its wait is the holder's run, long enough to make its workspace
    ahead, scheduler.ahead). One look per repository that has a queue."""
    out = set()
    for repo, queue in table.waiting.items():
        lock = table.held.get(repo)
        if queue and lock is not None and lock.exclusive:
            out.add(queue[0])
    return out


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


# -- the records (locks/state.json, locks/wants/<page>.json) -------------------------------------

def blocked(table: Table, known: Container[str]) -> dict[str, list[str]]:
    """The waiting jobs of each repository that is not in `known`, in their order."""
    return {repo: list(queue) for repo, queue in table.waiting.items() if repo not in known}


def held_record(table: Table, stuck: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """locks/state.json's body: what is held, and (`blocked`) the jobs waiting for a
    repository that is no longer known, which the scheduler fails. Small whatever the
    number of waiting jobs: those are in the pages."""
    return {
        "worker": "locks",
        "held": [{"repo": repo, "job": lock.job, "since": lock.since,
                  "exclusive": lock.exclusive} for repo, lock in table.held.items()],
        "blocked": {repo: list(jobs) for repo, jobs in (stuck or {}).items()},
    }


def page_record(wants: Mapping[str, Want]) -> dict[str, Any]:
    """One page's body (a LOCK_WANTS record): what each of its waiting jobs wants."""
    return {"wants": {job: {"repos": list(w.repos), "exclusive": w.exclusive, "seq": w.seq,
                            "created_at": w.created_at} for job, w in wants.items()}}


def to_record(table: Table) -> dict[str, Any]:
    """The whole table as ONE record (held and every want): what an earlier version kept in
    locks/state.json, still read by from_record; tests and tools use it for a snapshot."""
    return {**held_record(table), **page_record(table.wants)}


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
    """None if no job both holds locks and waits, else the first such job.

    (The queues are derived from the wants, so they cannot disagree with them; this is
    one pass over the wants, whatever their number.)"""
    holders = {lock.job for lock in table.held.values()}
    for job in table.wants:
        if job in holders:
            return f"job {job!r} both holds locks and waits"
    return None


def wants_from_record(rec: Mapping[str, Any]) -> dict[str, Want] | str:
    """The wants a page (or a whole-table record) holds, or what is wrong with them."""
    raw_wants = rec.get("wants", {})
    if not isinstance(raw_wants, dict):
        return "'wants' must be an object"
    wants: dict[str, Want] = {}
    job_id = JOB_ID_RE.fullmatch
    for job, raw in raw_wants.items():
        # the usual, well-formed entry in one test (a start reads every page); anything
        # else goes the long way, which says what is wrong
        if type(raw) is dict:
            repos, exclusive, seq = raw.get("repos"), raw.get("exclusive"), raw.get("seq")
            created = raw.get("created_at")
            if (type(repos) is list and repos and type(exclusive) is bool
                    and type(seq) is int and (created is None or type(created) is str)
                    and all(type(r) is str for r in repos) and len(set(repos)) == len(repos)
                    and job_id(job)):
                wants[job] = Want(tuple(repos), exclusive, seq, created)
                continue
        if not valid_job_id(job):
            return f"wants: {job!r} is not a job id"
        want = _want(job, raw)
        if isinstance(want, str):
            return want
        wants[job] = want
    return wants


def from_record(rec: Mapping[str, Any]) -> Table | str:
    """The table a record holds (held, and the wants of a whole-table record; a
    state.json of this version has none: they are in pages), or what is wrong with it.
    The queues are rebuilt from the wants; `blocked` (and an earlier version's `waiting`
    and `unavailable`) follow from the rest and are not read back."""
    held = _held(rec.get("held"))
    if isinstance(held, str):
        return held
    wants = wants_from_record(rec)
    if isinstance(wants, str):
        return wants
    table = Table(held, _queues(wants), wants)
    problem = _consistent(table)
    return table if problem is None else problem


def from_parts(state: Mapping[str, Any], pages: Iterable[Mapping[str, Want]]) -> Table | str:
    """The table of a state record and its pages: what is held, and every want. A job
    found holding and waiting holds (its grant was written before its page was: a crash
    came between), a job on two pages is taken once."""
    held = _held(state.get("held"))
    if isinstance(held, str):
        return held
    own = wants_from_record(state)          # a whole-table record of an earlier version
    if isinstance(own, str):
        return own
    holders = {lock.job for lock in held.values()}
    wants: dict[str, Want] = {}
    for page in [own, *pages]:
        for job, want in page.items():
            if job not in holders and job not in wants:
                wants[job] = want
    return Table(held, _queues(wants), wants)


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


def reap_request(jobs: Iterable[str], *, created_at: str) -> dict[str, Any]:
    """The REQUEST body by which the reaper asks the locks worker to free what `jobs`
    hold or wait for, each only if the job queue says it is finished or unknown (id from
    the jobs: asking again before the worker took it rewrites the same file)."""
    names = sorted(jobs)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return {"id": f"reap-{digest}", "kind": REAP, "jobs": names, "created_at": created_at}


#: The name of every grant hint in the scheduler's inbox starts so.
GRANTED_HINT_PREFIX = "granted-"


def granted_hint(job: str, *, created_at: str) -> dict[str, Any]:
    """The hint into scheduler/inbox that `job` now holds its locks (id granted-<job>).
    Written without fsyncs (send_request(durable=False)): the locks worker's state.json,
    durable before it, is what the scheduler dispatches from; the hint only wakes it."""
    return {"id": f"{GRANTED_HINT_PREFIX}{job}", "kind": GRANTED, "job": job,
            "created_at": created_at}


#: The name of every next-in-line hint in the scheduler's inbox starts so.
NEXT_HINT_PREFIX = "next-"


def next_hint(job: str, *, created_at: str) -> dict[str, Any]:
    """The hint into scheduler/inbox that `job` is now first in line for a repository held
    for a whole run (id next-<job>): the scheduler may make its workspace ahead. Written
    without fsyncs, like a grant hint: it asks for nothing that must survive a power cut
    (a workspace made ahead is only a head start; the grant decides)."""
    return {"id": f"{NEXT_HINT_PREFIX}{job}", "kind": NEXT, "job": job,
            "created_at": created_at}


def is_lock_hint(name: str) -> bool:
    """Whether an inbox file name is one of the locks worker's hints (granted-, next-)."""
    return name.startswith((GRANTED_HINT_PREFIX, NEXT_HINT_PREFIX))
