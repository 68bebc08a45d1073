"""What may be removed, and why: the reaper's rules, shared with `batchctl clean --dry-run`.

Pure decisions over `Known` (the jobs as the queue and the scheduler's inbox say at one
instant); nothing here touches a file. The rule every verdict keeps: nothing of a live job
is ever touched. A job is live while it is submitted but not taken yet (pending), queued,
waiting, starting or running — whatever its heartbeat says: only the scheduler decides a
job is lost. A finished job stays while a live job names it (`after`, `after_any`,
`resume_of`): forgetting it would doom the waiter or strand the resume. A workspace stays
while a live job works in it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.clock import parse_iso
from supervisor.state.layout import WORKSPACE_PREP, staging_owner
from supervisor.state.queue import TERMINAL_STATES
from supervisor.state.view import JobView

__all__ = ["PREP", "TRASH", "Age", "Expired", "Known", "ago", "corrupted_at", "expired",
           "folder_verdict", "process_verdict", "workspace_verdict"]

#: A folder being removed (renamed first, so a crash halfway is finished by the next pass).
TRASH = ".reap."
#: A workspace being made (scheduler: `.prep.<id>+<token>`, state.layout.workspace_staging;
#: renamed into place when whole).
PREP = WORKSPACE_PREP
#: The key naming the job whose session (and workspace) a job continues: the door turns a
#: submission's `resume` into it (state.submission.resolve_resumes), in the inbox already.
_RESUME_REFS = ("resume_of",)
_REFS = ("after", "after_any", *_RESUME_REFS)
_STAMP = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)(?:\.\d+)?$")

#: Seconds since a file last changed, or how to learn it (a stat the verdict makes only
#: when the answer depends on it; None: the file is gone).
Age = float | Callable[[], float | None]


def _older(age: Age, grace: float) -> bool:
    """Whether the file is at least `grace` old (False when it is gone)."""
    seconds = age() if callable(age) else age
    return seconds is not None and seconds >= grace


@dataclass
class Known:
    """The jobs at one instant: each queued entry's state, pending submissions, and the
    entries (decoded on demand; the finished jobs' `finished_at` in one go)."""

    states: dict[str, str]
    pending: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    get: Any = None                                  # job id -> entry (or None)
    values: Any = None                               # QueueReader.field_values, or None
    raw: Any = None                                  # QueueReader.raw, or None
    _cache: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @classmethod
    def read(cls, view: JobView) -> Known:
        """From a read view: the queue's states as recorded (not settled by a result the
        scheduler has not taken yet: that job is still live), less the jobs already handed
        to the scheduler to forget, and the inbox's submissions."""
        states: dict[str, str] = {}
        queue = view.queue
        if queue is not None:
            for state in ("queued", "waiting", "starting", "running", *sorted(TERMINAL_STATES)):
                states.update(dict.fromkeys(queue.ids(state), state))
        for job_id in view.pending.forgotten:
            if states.get(job_id) in TERMINAL_STATES:
                del states[job_id]
        pending = {i: j for i, j in view.pending.jobs.items() if i not in states}
        if queue is None:
            return cls(states, pending)
        return cls(states, pending, queue.get, queue.field_values, queue.raw)

    @classmethod
    def of(cls, entries: Iterable[Mapping[str, Any]],
           pending: Iterable[Mapping[str, Any]] = ()) -> Known:
        """From entries in memory (tests, benchmarks)."""
        table = {str(e["id"]): dict(e) for e in entries}
        return cls({i: str(e["state"]) for i, e in table.items()},
                   {str(p["id"]): dict(p) for p in pending}, table.get)

    def entry(self, job_id: str) -> dict[str, Any] | None:
        if job_id in self.pending:
            return self.pending[job_id]
        if job_id not in self._cache:
            self._cache[job_id] = None if self.get is None else self.get(job_id)
        return self._cache[job_id]

    @functools.cached_property
    def _finished_at(self) -> dict[str, float]:
        """The finished jobs' finished_at (epoch seconds) where their fields hold one,
        decoded in bulk (a pass reads it for every finished job: no body decoded)."""
        if self.values is None:
            return {}
        out = {}
        for job_id, text in self.values("finished_at", TERMINAL_STATES).items():
            at = parse_iso(text)
            if at is not None:
                out[job_id] = at
        return out

    @functools.cached_property
    def resumed_ends(self) -> dict[str, float]:
        """Workspace path -> when the last finished job that resumed a session in it
        ended: a workspace shared along a resume chain is kept for the last of them."""
        if self.raw is not None:
            found = [(i, json.loads(body)) for state in TERMINAL_STATES
                     for i, body in self.raw(state, [b'"resume_of":"'])]
        else:
            found = [(i, self.entry(i) or {}) for i, s in self.states.items()
                     if s in TERMINAL_STATES and (self.entry(i) or {}).get("resume_of")]
        out: dict[str, float] = {}
        for job_id, body in found:
            ws, ended = body.get("workspace"), self.finished(job_id)
            if isinstance(ws, str) and ended is not None:
                out[ws.rstrip("/")] = max(ended, out.get(ws.rstrip("/"), ended))
        return out

    def finished(self, job_id: str) -> float | None:
        """When the job ended: its finished_at, else its created_at (epoch seconds);
        None: neither is known."""
        if job_id not in self.pending:
            at = self._finished_at.get(job_id)
            if at is not None:
                return at
        entry = self.entry(job_id)
        return None if entry is None else _finished(entry)

    def state(self, job_id: str) -> str | None:
        """The job's state; `queued` for a pending submission; None: unknown."""
        return "queued" if job_id in self.pending else self.states.get(job_id)

    def live(self, job_id: str) -> bool:
        state = self.state(job_id)
        return state is not None and state not in TERMINAL_STATES

    @functools.cached_property
    def live_ids(self) -> list[str]:
        return [*(i for i, s in self.states.items() if s not in TERMINAL_STATES),
                *self.pending]

    def _named(self, keys: Sequence[str]) -> frozenset[str]:
        named: set[str] = set()
        for job_id in self.live_ids:
            entry = self.entry(job_id) or {}
            for key in keys:
                value = entry.get(key)
                named.update(map(str, value) if isinstance(value, list) else
                             [str(value)] if isinstance(value, str) else [])
        return frozenset(named)

    @functools.cached_property
    def named_by_live(self) -> frozenset[str]:
        """Jobs a live job names (after, after_any, resume_of)."""
        return self._named(_REFS)

    @functools.cached_property
    def resumed_by_live(self) -> frozenset[str]:
        """Jobs whose agent session (and workspace) a live job continues."""
        return self._named(_RESUME_REFS)

    @functools.cached_property
    def live_repos(self) -> frozenset[str]:
        """The repositories live jobs name."""
        return frozenset(str(r) for job_id in self.live_ids
                         for r in (self.entry(job_id) or {}).get("repos") or ())

    @functools.cached_property
    def live_workspaces(self) -> frozenset[str]:
        """The workspace paths live jobs work in (their own, or the one they resume)."""
        paths = set()
        for job_id in self.live_ids:
            ws = (self.entry(job_id) or {}).get("workspace")
            if isinstance(ws, str):
                paths.add(ws.rstrip("/"))
        return frozenset(paths)


@dataclass(frozen=True)
class Expired:
    """A finished job that may be forgotten, and why."""

    id: str
    state: str
    finished_at: str | None
    why: str


def ago(seconds: float) -> str:
    """A span as an operator reads it: `45s`, `12m 5s`, `3h 20m`, `31d 4h`."""
    s = max(0, int(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                     ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{s}s"


def _finished(entry: Mapping[str, Any]) -> float | None:
    return parse_iso(entry.get("finished_at")) or parse_iso(entry.get("created_at"))


def expired(known: Known, now: float, older_than: float | None, *,
            states: Sequence[str] = (), why: str = "retention.jobs",
            limit: int | None = None) -> list[Expired]:
    """Finished jobs (of `states`, or all five) that ended at least `older_than` seconds
    ago (None: never), except those a live job names; in submission order."""
    if older_than is None:
        return []
    wanted = set(states) if states else TERMINAL_STATES
    out: list[Expired] = []
    for job_id, state in known.states.items():
        if state not in wanted or job_id in known.named_by_live:
            continue
        ended = known.finished(job_id)
        if ended is None or now - ended < older_than:
            continue
        entry = known.entry(job_id) or {}
        out.append(Expired(job_id, state, entry.get("finished_at"),
                           f"{why}: {state} {ago(now - ended)} ago"))
        if limit is not None and len(out) >= limit:
            break
    return out


def workspace_verdict(name: str, path: str, age: Age, known: Known, now: float, *,
                      grace: float, keep: float | None) -> str | None:
    """Why `workspace_dir/<name>` may go (None: it stays). `age`: seconds since it last
    changed (or how to learn it: asked only when the job's own state lets it go);
    `keep`: retention.workspaces."""
    if name.startswith(TRASH):
        return "a removal a crash cut short"
    if path.rstrip("/") in known.live_workspaces:
        return None
    job_id = staging_owner(name) or name
    if known.live(job_id) or (job_id in known.resumed_by_live and not name.startswith(PREP)):
        return None                  # a finished job's half-made `.prep.` is no one's
    later = known.resumed_ends.get(path.rstrip("/"))
    if later is not None and (keep is None or now - later < keep):
        return None                  # a later job resumed in it (its first owner may be gone)
    state = known.state(job_id)
    if state is not None and not name.startswith(PREP):
        ended = known.finished(job_id)
        if keep is None or ended is None or now - ended < keep:
            return None
    if not _older(age, grace):
        return None
    if name.startswith(PREP):
        return "left over from a workspace that was never finished"
    if state is None:
        return "no such job"
    return f"job {state} past retention.workspaces"


def folder_verdict(name: str, age: Age, known: Known, *, grace: float) -> str | None:
    """Why `jobs/<name>` may go outside retention (which forgets the job first): a removal
    a crash cut short, or the folder of a job the queue does not know. `age` as for
    workspace_verdict."""
    if name.startswith(TRASH):
        return "a removal a crash cut short"
    if known.state(name) is not None or not _older(age, grace):
        return None
    return "no such job"


def process_verdict(job_id: str, age: float, known: Known, *, grace: float) -> str | None:
    """Why a process carrying this instance's BATCHD_JOB_DIR for `job_id` may be killed:
    its job is finished or unknown and it is older than the grace."""
    state = known.state(job_id)
    if state is not None and state not in TERMINAL_STATES:
        return None
    if age < grace:
        return None
    return "job unknown" if state is None else f"job {state}"


def corrupted_at(name: str) -> float | None:
    """When a quarantined file (`NAME.corrupted.<UTC stamp>[.n]`) was moved aside."""
    if CORRUPT_MARK not in name:
        return None
    m = _STAMP.search(name)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
