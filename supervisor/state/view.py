"""The read-only view of the state directory: daemon, workers, startups and jobs.

What batchctl (and the api) show, read by the same code; neither ever writes what it
reads here. Jobs are the union of the scheduler's job queue (opened with readonly=True,
so it never truncates, quarantines or writes while the scheduler appends) and the
submissions still waiting in `scheduler/inbox/` (the scheduler has not enqueued them yet;
they are shown as `queued`). A request file that is half written cannot be seen (files
arrive by rename); one that cannot be parsed is skipped here and left for its owner, the
scheduler, to quarantine.

What cannot be read is never shown as empty: a job queue or inbox that exists but cannot
be opened (not a directory, unreadable, not understood) and a corrupt startup log raise
`Unreadable` naming the file and why; the reader leaves the file where it is (its owner
quarantines it).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from supervisor.config import Config
from supervisor.state import disk
from supervisor.state.atomic import Corrupt, Missing, is_tmp_name
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.instance import probe
from supervisor.state.jobs import job_record, job_timeout, settled_fields
from supervisor.state.layout import (
    PAUSED,
    REAPED_KINDS,
    REQUEST,
    RESULT,
    STARTUP_LOG,
    WORKER_STATE,
    WORKERS,
    Layout,
    read_record,
)
from supervisor.state.queue import (
    COUNTERS,
    JOB_STATES,
    SUBLOG_COUNTER,
    TERMINAL_STATES,
    JobQueue,
    QueueError,
)
from supervisor.state.queuefollow import LiveQueue
from supervisor.state.sublog import LogReader
from supervisor.state.wal import WalError

__all__ = [
    "JOB_STATES",
    "STAT_KEYS",
    "TERMINAL",
    "JobFilter",
    "JobView",
    "Pending",
    "PendingIds",
    "QueueReader",
    "Unreadable",
    "batchd_pid",
    "collected_patch",
    "follow_queue",
    "open_queue",
    "open_view",
    "read_pending",
    "read_reaped",
    "read_startups",
    "read_workers",
]

#: Terminal job states (CONTRACT.md).
TERMINAL: frozenset[str] = TERMINAL_STATES

#: The counters of `stats` (CONTRACT.md), zero when the queue has none.
STAT_KEYS: tuple[str, ...] = COUNTERS


class Unreadable(Exception):
    """State that exists but cannot be read (batchctl: exit 1); the message says which, why."""


def _why(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def batchd_pid(layout: Layout) -> int | None:
    """The pid of the running batchd (it holds the lock), or None; never takes the lock."""
    return probe(layout)


def collected_patch(layout: Layout, job_id: str) -> Path | None:
    """The job's changes.patch when its collection finished (changes.json, written after
    the patch, exists); None otherwise: not collected yet, no repositories, or an adaptor
    killed between the two files (docs/STATE.md), whose lone patch is never shown."""
    paths = layout.job(job_id)
    return paths.patch if paths.changes.exists() and paths.patch.exists() else None


def read_workers(layout: Layout) -> list[dict[str, Any]]:
    """The worker entries of workers.json in startup order ([] if missing or unreadable)."""
    rec = read_record(WORKERS, layout.workers_file, owner=False)
    if not isinstance(rec, dict) or not isinstance(rec.get("workers"), list):
        return []
    return [w for w in rec["workers"] if isinstance(w, dict)]


def read_startups(layout: Layout) -> list[dict[str, Any]]:
    """The startup log's entries, oldest first ([] if there is none yet).

    A corrupt log raises Unreadable: a reader is not its owner, so it leaves the file in
    place; batchd (the owner) moves it aside at its next start.
    """
    rec = read_record(STARTUP_LOG, layout.startup_log, owner=False)
    if isinstance(rec, Missing):
        return []
    if isinstance(rec, Corrupt):
        reason = rec.reason
    elif not isinstance(rec["startups"], list):
        reason = "startups is not a list"
    else:
        return [s for s in rec["startups"] if isinstance(s, dict)]
    raise Unreadable(f"{layout.startup_log.name} is corrupt ({reason}); "
                     "batchd moves it aside at its next start")


def read_reaped(layout: Layout) -> dict[str, int]:
    """The reaper's totals by kind (state.layout.REAPED_KINDS; zeros before its first pass
    or when its record cannot be read: counts, never a reason to fail)."""
    rec = read_record(WORKER_STATE, layout.worker_state("reaper"), owner=False)
    totals = rec.get("totals") if isinstance(rec, dict) else None
    totals = totals if isinstance(totals, dict) else {}
    return {k: int(totals[k]) if isinstance(totals.get(k), int) else 0 for k in REAPED_KINDS}


class QueueReader(Protocol):
    """What a reader needs of state.queue.JobQueue (an in-memory twin fits too)."""

    def get(self, job_id: str) -> dict[str, Any] | None: ...
    def state(self, job_id: str) -> str | None: ...
    def ids(self, state: str | None = None) -> list[str]: ...
    def ids_in(self, states: Iterable[str]) -> list[str]: ...
    def raw(self, state: str | None = None,
            needles: Sequence[bytes] = ()) -> list[tuple[str, bytes]]: ...
    def field_values(self, key: str,
                     states: Iterable[str] | None = None) -> dict[str, Any]: ...
    def counts(self) -> dict[str, int]: ...
    def stats(self) -> dict[str, int]: ...
    def counter(self, name: str) -> int: ...
    def close(self) -> None: ...


@dataclass
class Pending:
    """Submissions and cancels waiting in the scheduler's inbox, in request order; `pause`
    is the last pause (True) or resume (False) request there, None if none; `forgotten`
    the jobs the reaper asked the scheduler to forget (archived, folders removed)."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancels: set[str] = field(default_factory=set)
    pause: bool | None = None
    forgotten: set[str] = field(default_factory=set)


def read_pending(layout: Layout) -> Pending:
    """Parse every request in `scheduler/inbox/`, oldest first (by mtime, as the scheduler).

    No inbox yet: nothing pending. An inbox that cannot be listed raises Unreadable.
    """
    folder = layout.inbox("scheduler")
    stamped: list[tuple[int, str]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.endswith(".json") or is_tmp_name(entry.name):
                    continue
                try:
                    stamped.append((entry.stat().st_mtime_ns, entry.name))
                except FileNotFoundError:   # taken by the scheduler meanwhile
                    continue
    except FileNotFoundError:
        return Pending()
    except OSError as exc:
        raise Unreadable(f"cannot read the scheduler's inbox at {folder}: {_why(exc)}") from None
    pending = Pending()
    for _, name in sorted(stamped):
        rec = read_record(REQUEST, folder / name, owner=False)
        if not isinstance(rec, dict):
            continue
        if rec.get("kind") == "submit" and isinstance(rec.get("jobs"), list):
            for job in rec["jobs"]:
                if isinstance(job, dict) and isinstance(job.get("id"), str):
                    pending.jobs.setdefault(job["id"], job)
        elif rec.get("kind") == "cancel" and isinstance(rec.get("job"), str):
            pending.cancels.add(rec["job"])
        elif rec.get("kind") == "forget" and isinstance(rec.get("jobs"), list):
            pending.forgotten.update(j for j in rec["jobs"] if isinstance(j, str))
        elif rec.get("kind") in ("pause", "resume"):
            pending.pause = rec["kind"] == "pause"
    return pending


class PendingIds:
    """The ids of the jobs submitted in `scheduler/inbox/` (read_pending's `jobs`), for a
    long-lived submitter (the api): each request file is parsed once, then remembered by
    its name and inode (a request file is never changed in place: a rewrite is a rename
    of a new file, a new inode), and the ids are kept up to date file by file, so a
    refresh costs one listing of the inbox, however many requests wait in it."""

    def __init__(self, layout: Layout) -> None:
        self.folder = layout.inbox("scheduler")
        self._files: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._ids: dict[str, int] = {}          # id -> how many files hold it

    def refresh(self) -> Container[str]:
        """The ids now (a live view: valid until the next refresh); Unreadable when the
        inbox cannot be listed."""
        files = self._files
        seen: dict[str, tuple[int, tuple[str, ...]]] = {}
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    name = entry.name
                    if not name.endswith(".json") or is_tmp_name(name):
                        continue
                    known = files.get(name)
                    inode = entry.inode()
                    if known is None or known[0] != inode:
                        ids = _submitted_ids(self.folder / name)
                        if ids is None:         # taken meanwhile, or not a request
                            continue
                        known = (inode, ids)
                    seen[name] = known
        except FileNotFoundError:
            seen = {}
        except OSError as exc:
            raise Unreadable(f"cannot read the scheduler's inbox at {self.folder}: "
                             f"{_why(exc)}") from None
        counts = self._ids
        for name, (inode, ids) in files.items():
            now = seen.get(name)
            if now is None or now[0] != inode:
                for job_id in ids:
                    left = counts[job_id] - 1
                    if left:
                        counts[job_id] = left
                    else:
                        del counts[job_id]
        for name, (inode, ids) in seen.items():
            was = files.get(name)
            if was is None or was[0] != inode:
                for job_id in ids:
                    counts[job_id] = counts.get(job_id, 0) + 1
        self._files = seen
        return counts.keys()


def _submitted_ids(path: Path) -> tuple[str, ...] | None:
    """The job ids of the submit request at `path` (() for another kind of request);
    None when it is gone or not a well-formed request (not remembered: read again)."""
    rec = read_record(REQUEST, path, owner=False)
    if not isinstance(rec, dict):
        return None
    if rec.get("kind") != "submit" or not isinstance(rec.get("jobs"), list):
        return ()
    return tuple(job["id"] for job in rec["jobs"]
                 if isinstance(job, dict) and isinstance(job.get("id"), str))


class JobView:
    """Jobs as readers show them: queue entries first, then pending submissions."""

    def __init__(self, cfg: Config, layout: Layout, queue: QueueReader | None,
                 pending: Pending) -> None:
        self.cfg = cfg
        self.layout = layout
        self.queue = queue
        self.pending = pending
        self._queue_ids: list[str] | None = None
        self._load: tuple[int, Counter[str]] | None = None
        self._disk: tuple[str | None] | None = None
        self._paused: bool | None = None

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    def __enter__(self) -> JobView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def queue_ids(self) -> list[str]:
        """Ids in the queue, submission order (read once per view)."""
        if self._queue_ids is None:
            self._queue_ids = [] if self.queue is None else list(self.queue.ids())
        return self._queue_ids

    def pending_ids(self) -> list[str]:
        """Ids only in the inbox (not yet enqueued), request order."""
        in_queue = set(self.queue_ids()) if self.pending.jobs else set()
        return [i for i in self.pending.jobs if i not in in_queue]

    def ids(self) -> list[str]:
        """Every known job id: queue order, then pending submissions."""
        return self.queue_ids() + self.pending_ids()

    def known_ids(self) -> set[str]:
        """Every id in use (queue or pending), for duplicate checks."""
        return set(self.queue_ids()) | set(self.pending.jobs)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The entry of `job_id` (a pending one as state 'queued'), or None if unknown."""
        entry = self.queue.get(job_id) if self.queue is not None else None
        if entry is not None:
            return self._settled(entry)
        job = self.pending.jobs.get(job_id)
        if job is None:
            return None
        return {
            **job,
            "state": "queued",
            "attempts": 0,
            "workspace": job.get("workspace") or str(self.cfg.workspace_dir / job_id),
        }

    def _settled(self, entry: dict[str, Any]) -> dict[str, Any]:
        """An active entry whose adaptor already wrote result.json, shown as it will be
        recorded (the scheduler has not done it yet: batchd down, or a tick away), a
        cancel waiting in the inbox counted as the scheduler will count it."""
        if entry.get("state") not in ("starting", "running"):
            return entry
        result = read_record(RESULT, self.layout.job_result(str(entry["id"])), owner=False)
        if not isinstance(result, dict):
            return entry
        if entry["id"] in self.pending.cancels and not entry.get("cancel_requested"):
            # the scheduler takes its inbox before it ticks a job: this cancel will be
            # recorded first, so the result settles the job as cancelled (chaos seed
            # 31711598 saw `failed`, then `cancelled`, shown for one job)
            entry = {**entry, "cancel_requested": True}
        fields = settled_fields(entry, result, job_timeout(self.cfg, entry), iso_now())
        return {**entry, **fields, "pid": None}

    def entries(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every entry (or those in `state`) in listing order."""
        if state is None:
            ids = self.ids()
        else:
            ids = [] if self.queue is None else list(self.queue.ids(state))
            if state == "queued":
                ids += self.pending_ids()
            if state in TERMINAL_STATES and self.queue is not None:
                ids += self._active_ids()     # those whose result settles them to it
        out = []
        for job_id in ids:
            entry = self.get(job_id)
            if entry is not None and (state is None or entry.get("state") == state):
                out.append(entry)
        return out

    def candidates(self, flt: JobFilter) -> list[str]:
        """Ids that may match `flt`, in listing order, before any body is decoded: from the
        queue's state column alone when only a state is asked, else by a byte search of
        the raw bodies (needles, since). The caller decodes and checks each (matches)."""
        needles = flt.needles()
        since = None if flt.since is None else iso_now(flt.since).encode()
        states: list[str | None] = [flt.state]
        if flt.state in TERMINAL_STATES:
            states += ["starting", "running"]     # those whose result settles them
        ids: list[str] = []
        if self.queue is not None:
            if not needles and since is None:
                if flt.state is None:
                    ids = list(self.queue_ids())
                else:
                    keep = {i for state in states for i in self.queue.ids(state)}
                    ids = [i for i in self.queue_ids() if i in keep]
            else:
                for state in states:
                    for job_id, body in self.queue.raw(state, needles):
                        if since is None or _created(body) >= since:
                            ids.append(job_id)
                if len(states) > 1:
                    order = {j: i for i, j in enumerate(self.queue_ids())}
                    ids.sort(key=order.__getitem__)
        if flt.state in (None, "queued"):
            ids += self.pending_ids()
        return ids

    def select(self, flt: JobFilter) -> list[dict[str, Any]]:
        """The entries matching `flt`, in listing order (the `limit` most recent)."""
        out = []
        for job_id in self.candidates(flt):
            entry = self.get(job_id)
            if entry is not None and flt.matches(entry):
                out.append(entry)
        return out[-flt.limit:] if flt.limit is not None else out

    def record(self, entry: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """The contract's job record of an entry; a queued job's `reason` says why it has
        not started."""
        rec = job_record(entry, self.layout)
        if rec["state"] == "queued":
            rec["reason"] = self.waiting_reason(entry, time.time() if now is None else now)
        return rec

    def paused(self) -> bool:
        """Whether the scheduler starts no new job: its pause flag, or the last pause or
        resume request still waiting in its inbox (batchd down). Read once per view."""
        if self._paused is None:
            self._paused = self._read_paused()
        return self._paused

    def _read_paused(self) -> bool:
        if self.pending.pause is not None:
            return self.pending.pause
        rec = read_record(PAUSED, self.layout.paused_file, owner=False)
        if isinstance(rec, Missing):
            return False
        return True if isinstance(rec, Corrupt) else bool(rec.get("paused"))

    def waiting_reason(self, entry: dict[str, Any], now: float) -> str | None:
        """Why a queued job has not started yet (CONTRACT: `reason` while queued): its
        dependencies, its not_before, the pause, its agent's limit, the global limit."""
        if entry.get("state") != "queued":
            return None
        named = [d for key in ("after", "after_any") for d in entry.get(key) or ()]
        deps = [d for d in map(self._retried, named) if self.state(d) not in TERMINAL_STATES]
        if deps:
            return "after " + ", ".join(deps)
        when = parse_iso(entry.get("not_before"))
        if when is not None and when > now:
            return f"not_before {entry['not_before']}"
        if self.paused():
            return "paused"
        low = self.disk_low()
        if low is not None:
            return low
        agent = str(entry.get("agent"))
        spec = self.cfg.agents.get(agent)
        busy = self._busy()
        if spec is not None and spec.max_concurrent is not None \
                and busy[1][agent] >= spec.max_concurrent:
            return f"agent limit ({agent}: {spec.max_concurrent})"
        if busy[0] >= self.cfg.scheduler.max_concurrent_jobs:
            return f"global limit ({self.cfg.scheduler.max_concurrent_jobs})"
        return None

    def disk_low(self) -> str | None:
        """Why no job starts for lack of space (state.disk.low), measured once per view."""
        if self._disk is None:
            self._disk = (disk.low(self.cfg),)
        return self._disk[0]

    def _retried(self, named: object) -> str:
        """The last job of `named`'s retry chain (a retried dependency hands its waiters
        to the retry)."""
        job_id = str(named)
        seen: set[str] = set()
        while job_id not in seen and self.state(job_id) in ("failed", "lost"):
            seen.add(job_id)
            entry = self.get(job_id)
            nxt = None if entry is None else entry.get("retried_as")
            if not isinstance(nxt, str):
                break
            job_id = nxt
        return job_id

    def _busy(self) -> tuple[int, Counter[str]]:
        """(jobs starting/running, jobs of each agent waiting/starting/running)."""
        if self._load is None:
            per_agent: Counter[str] = Counter()
            running = 0
            if self.queue is not None:
                counts = self.queue.counts()
                running = counts.get("starting", 0) + counts.get("running", 0)
                for job_id in self.queue.ids_in(("waiting", "starting", "running")):
                    entry = self.queue.get(job_id)
                    if entry is not None:
                        per_agent[str(entry.get("agent"))] += 1
            self._load = (running, per_agent)
        return self._load

    def _active_ids(self) -> list[str]:
        if self.queue is None:
            return []
        return [*self.queue.ids("starting"), *self.queue.ids("running")]

    def state(self, job_id: str) -> str | None:
        entry = self.get(job_id)
        return None if entry is None else str(entry.get("state"))

    def counts(self) -> dict[str, int]:
        """Jobs per state (only states that have jobs), pending ones as 'queued'."""
        counts: Counter[str] = Counter()
        if self.queue is not None:
            counts.update({s: int(n) for s, n in self.queue.counts().items() if n})
            for state in ("starting", "running"):     # a written result settles the job
                for job_id in self.queue.ids(state):
                    entry = self.get(job_id)
                    if entry is not None and entry["state"] != state:
                        counts[state] -= 1
                        counts[str(entry["state"])] += 1
            counts = Counter({k: n for k, n in counts.items() if n > 0})
        pending = len(self.pending_ids())
        if pending:
            counts["queued"] += pending
        return dict(counts)

    def stats(self) -> dict[str, int]:
        """The queue's counters; every key of STAT_KEYS present."""
        raw = self.queue.stats() if self.queue is not None else {}
        out = {k: int(raw.get(k, 0)) for k in STAT_KEYS}
        for k, v in raw.items():
            out.setdefault(k, int(v))
        return out


_CREATED = b'"created_at":"'


def _created(body: bytes) -> bytes:
    """The created_at text of a raw job body (b"" when it has none)."""
    at = body.find(_CREATED)
    if at < 0:
        return b""
    start = at + len(_CREATED)
    return body[start:body.find(b'"', start)]


def _json_text(value: str) -> bytes:
    """How a string appears inside the queue's compact JSON (ensure_ascii off)."""
    return json.dumps(value, ensure_ascii=False).encode()


@dataclass(frozen=True)
class JobFilter:
    """`jobs` filters: state, batch, agent, labels (all of them), created since, limit."""

    state: str | None = None
    batch: str | None = None
    agent: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    since: float | None = None
    limit: int | None = None

    def needles(self) -> list[bytes]:
        """Byte strings every matching body contains (a prefilter, checked after)."""
        out = []
        if self.agent is not None:
            out.append(b'"agent":' + _json_text(self.agent))
        if self.batch is not None:
            out.append(b'"batch":' + _json_text(self.batch))
        out += [_json_text(k) + b":" + _json_text(v) for k, v in self.labels.items()]
        return out

    def matches(self, entry: Mapping[str, Any]) -> bool:
        if self.state is not None and entry.get("state") != self.state:
            return False
        if self.agent is not None and entry.get("agent") != self.agent:
            return False
        if self.batch is not None and entry.get("batch") != self.batch:
            return False
        labels = entry.get("labels") or {}
        if any(labels.get(k) != v for k, v in self.labels.items()):
            return False
        if self.since is not None:
            created = parse_iso(entry.get("created_at"))
            if created is None or created < self.since:
                return False
        return True


def open_queue(path: Path) -> QueueReader | None:
    """The job queue at `path` opened read-only; None if batchd never created it.

    Anything else that stops the read (not a directory, no permission, a log the queue
    cannot understand) raises Unreadable: an unreadable queue is never shown as empty.
    """
    def unreadable(why: str) -> Unreadable:
        return Unreadable(f"cannot read the job queue at {path}: {why}")

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unreadable(_why(exc)) from None
    if not stat.S_ISDIR(mode):
        raise unreadable("it is not a directory")
    try:
        return JobQueue.open(path, readonly=True)
    except OSError as exc:
        raise unreadable(_why(exc)) from None
    except (QueueError, WalError) as exc:
        raise unreadable(str(exc)) from None


#: wal_dir -> the LiveQueue this process follows it with (follow_queue).
_LIVE: dict[str, LiveQueue] = {}
#: wal_dir -> the LogReader following the api's submission log beside it (follow_queue).
_LIVE_LOG: dict[str, LogReader] = {}


def follow_queue(layout: Layout) -> LiveQueue:
    """From now on this process's views of `layout` share ONE read-only queue that follows
    the log (state.queuefollow.LiveQueue) instead of opening the queue each time: for a
    long-lived reader serving many requests (the api). batchctl never calls it."""
    key = str(layout.wal_dir)
    if key not in _LIVE:
        _LIVE[key] = LiveQueue(layout.wal_dir)
        _LIVE_LOG[key] = LogReader(layout.sublog_dir)
    return _LIVE[key]


def _live_queue(live: LiveQueue) -> QueueReader | None:
    try:
        got: QueueReader | None = live.current()
        return got
    except OSError as exc:
        raise Unreadable(f"cannot read the job queue at {live.wal_dir}: {_why(exc)}") from None
    except (QueueError, WalError) as exc:
        raise Unreadable(f"cannot read the job queue at {live.wal_dir}: {exc}") from None


def open_view(cfg: Config, layout: Layout) -> JobView:
    """Read the pending submissions, then open the job queue read-only (none yet: empty),
    or bring this process's followed queue up to date (follow_queue).

    The inbox and the api's submission log (state.sublog) are read FIRST: the scheduler
    enqueues a job before it removes its request (or, in the same WAL group, advances
    the queue's SUBLOG_COUNTER past its record), so a job cannot slip between the reads
    and look unknown; the log's records at or below the counter are in the queue (or
    were forgotten since) and are not pending. Unreadable if any cannot be read.
    """
    pending = read_pending(layout)
    live = _LIVE.get(str(layout.wal_dir))
    log = _LIVE_LOG.get(str(layout.wal_dir)) or LogReader(layout.sublog_dir)
    with log.lock:                      # one bookmark at a time for a shared reader
        try:
            log.refresh()
        except OSError as exc:
            raise Unreadable(f"cannot read the api's submission log at {log.folder}: "
                             f"{_why(exc)}") from None
        queue = open_queue(layout.wal_dir) if live is None else _live_queue(live)
        consumed = 0 if queue is None else queue.counter(SUBLOG_COUNTER)
        logged = log.pending(consumed)
    for rec in logged:
        for job in rec.get("jobs") or ():
            if isinstance(job, dict) and isinstance(job.get("id"), str):
                pending.jobs.setdefault(job["id"], job)
    return JobView(cfg, layout, queue, pending)
