"""The reaper worker: orphans and retention, so batchd can run for a year.

Each pass (at start, its recovery; then every `reaper.interval`, and sooner while an
orphan's SIGKILL is due) removes, each with a logged reason and a count:
stale temp files and old quarantined files (reaper.sweep); processes of finished or
unknown jobs (reaper.orphans); workspaces with no job, half-made ones, and finished jobs'
past `retention.workspaces`; job folders of unknown jobs; mirrors of removed repositories
(reaper.trash removes folders so a crash halfway is finished); locks of finished or
unknown jobs and settled webhook records past `retention.callbacks`, asked of their
owners (reaper.asks); and finished jobs past
`retention.jobs`: archived, their folders removed, then dropped from the queue by the
scheduler (reaper.forget). What it may remove is decided by state.retention, which never
touches anything of a live job. Nothing job-related is reaped when the queue cannot be read.

Inbox `reaper/inbox/`: `clean` (batchctl clean): forget finished jobs now, answered in
`reaper/replies/<id>.json`. Counts go to `reaper/state.json` (WORKER_STATE: worker,
last_pass_at, removed (this pass, by kind), totals (by kind)), written atomically by
this worker only; a corrupt one is quarantined and the totals restart from 0.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import log as _log
from supervisor.config import Config
from supervisor.reaper import asks, forget, sweep, trash
from supervisor.reaper.orphans import Orphans
from supervisor.reaper.textfile import Textfile
from supervisor.runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    BadRequest,
    Log,
    Watcher,
    handle_inbox,
    report_ready,
    stop_requested,
    until_written,
)
from supervisor.state.atomic import Corrupt, ensure_dir, quarantine
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.layout import (
    REAPED_KINDS,
    REPLY,
    WORKER_STATE,
    Layout,
    read_record,
    write_record,
)
from supervisor.state.proc import Tagged
from supervisor.state.queue import TERMINAL_STATES
from supervisor.state.repos import all_repositories
from supervisor.state.retention import (
    PREP,
    TRASH,
    Expired,
    Known,
    expired,
    folder_verdict,
    workspace_verdict,
)
from supervisor.state.view import JobView, Unreadable, open_view

__all__ = ["HANDLERS", "NAME", "Reaper", "main", "one_pass", "recover"]

NAME = "reaper"
#: Replies to `clean` are kept this long for batchctl to read, then removed.
REPLY_KEEP = 600.0


@dataclass
class Reaper:
    """What the worker holds between passes: the totals (from state.json), the orphans
    signalled, and the seams (clock)."""

    cfg: Config
    layout: Layout
    log: Log
    clock: Clock = SYSTEM_CLOCK
    totals: Counter[str] = field(default_factory=Counter)
    orphans: Orphans | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.orphans is None:
            self.orphans = Orphans(self.cfg.reaper.grace, self.cfg.scheduler.kill_grace,
                                   str(self.layout.jobs_dir))

    def removed(self, did: Counter[str], kind: str, what: str, why: str) -> None:
        """Count and log one removal."""
        did[kind] += 1
        self.log.info("reaped", kind=kind, what=what, why=why)


# -- the parts of a pass ---------------------------------------------------------------------

def _mtime_age(path: Path, now: float) -> float | None:
    try:
        return now - path.lstat().st_mtime
    except FileNotFoundError:
        return None


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def _age_of(path: str, now: float) -> Callable[[], float | None]:
    """The age of `path` (its lstat), asked only if a verdict needs it: a pass over
    10,000 finished jobs then stats none of their folders."""
    def age() -> float | None:
        try:
            return now - os.lstat(path).st_mtime
        except FileNotFoundError:
            return None
    return age


def _own_workspace_dir(r: Reaper) -> Path | None:
    """The workspace folder, unless it holds the state dir (a configuration the reaper
    refuses to sweep: it would see batchd's own files as orphans)."""
    ws = Path(os.path.abspath(r.cfg.workspace_dir))
    state = Path(os.path.abspath(r.layout.root))
    return None if ws == state or ws in state.parents else ws


def reap_workspaces(r: Reaper, known: Known, now: float, did: Counter[str]) -> None:
    folder = _own_workspace_dir(r)
    if folder is None:
        return
    base = os.path.join(folder, "")
    due: dict[Path, str] = {}
    for name in _listdir(folder):
        if name.startswith(TRASH):
            continue                                     # trash.finish, below
        path = base + name
        why = workspace_verdict(name, path, _age_of(path, now), known, now,
                                grace=r.cfg.reaper.grace, keep=r.cfg.retention.workspaces)
        if why is not None:
            due[Path(path)] = why
        if len(due) >= forget.BATCH:
            _discard(r, due, "workspaces", did)
    _discard(r, due, "workspaces", did)
    for leftover in trash.finish(folder):
        r.removed(did, "workspaces", leftover, "a removal a crash cut short")


def _discard(r: Reaper, due: dict[Path, str], kind: str, did: Counter[str]) -> None:
    """Remove the folders of `due` (path -> why) in one go (trash.discard_many), each
    counted and logged; `due` is emptied."""
    for path in trash.discard_many(due):
        r.removed(did, kind, str(path), due[path])
    due.clear()


def reap_job_folders(r: Reaper, known: Known, now: float, did: Counter[str]) -> None:
    folder = r.layout.jobs_dir
    base = os.path.join(folder, "")
    due: dict[Path, str] = {}
    for name in _listdir(folder):
        if name.startswith(TRASH):
            continue
        why = folder_verdict(name, _age_of(base + name, now), known, grace=r.cfg.reaper.grace)
        if why is not None:
            due[folder / name] = why
        if len(due) >= forget.BATCH:
            _discard(r, due, "job_folders", did)
    _discard(r, due, "job_folders", did)
    for leftover in trash.finish(folder):
        r.removed(did, "job_folders", leftover, "a removal a crash cut short")


def reap_mirrors(r: Reaper, known: Known, now: float, did: Counter[str]) -> None:
    """Mirrors of repositories neither configured nor registered, that no live job names."""
    folder = r.layout.mirrors_dir
    repos = all_repositories(r.cfg, r.layout)
    for name in _listdir(folder):
        if name.startswith(TRASH) or not name.endswith(".git"):
            continue
        repo = name[len(PREP):-4] if name.startswith(PREP) else name[:-4]
        age = _mtime_age(folder / name, now)
        if repo in repos or repo in known.live_repos or age is None or age < r.cfg.reaper.grace:
            continue
        if trash.discard(folder / name):
            r.removed(did, "mirrors", str(folder / name), "repository removed")
    for leftover in trash.finish(folder):
        r.removed(did, "mirrors", leftover, "a removal a crash cut short")


def reap_processes(r: Reaper, known: Known, now: float, did: Counter[str]) -> None:
    def state_of(job_id: str) -> str | None:
        with open_view(r.cfg, r.layout) as view:      # afresh: right before the signal
            state = None if view.queue is None else view.queue.state(job_id)
            if state is None and job_id in view.pending.jobs:
                return "queued"
            return None if job_id in view.pending.forgotten else state

    def on_signal(t: Tagged, sig: str, why: str) -> None:
        r.log.info("orphan signalled", process=t.pid, uid=t.uid, job=t.job_id, signal=sig,
                   why=why)

    assert r.orphans is not None
    n = r.orphans.reap(known, now, state_of, on_signal)
    did["processes"] += n


def forget_expired(r: Reaper, view: JobView, known: Known, now: float, did: Counter[str],
                   *, older_than: float | None, states: tuple[str, ...] = (),
                   why: str = "retention.jobs") -> list[Expired]:
    """Forget finished jobs (as selected by state.retention.expired), a step at a time."""
    gone: list[Expired] = []
    done: set[str] = set()
    while not stop_requested():
        batch = [e for e in expired(known, now, older_than, states=states, why=why)
                 if e.id not in done][:forget.BATCH]
        if not batch:
            break
        records = _records(view, [e.id for e in batch])
        forget.begin(r.layout, records, _workspaces(r, known, records, now), now)
        for e in batch:
            done.add(e.id)
            r.removed(did, "jobs", e.id, f"{e.why} (finished {e.finished_at})")
        gone += batch
    return gone


def _records(view: JobView, ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for job_id in ids:
        entry = view.queue.get(job_id) if view.queue is not None else None
        if entry is not None and entry.get("state") in TERMINAL_STATES:
            out.append(view.record(entry))
    return out


def _workspaces(r: Reaper, known: Known, records: list[dict[str, Any]],
                now: float) -> list[str]:
    """The workspaces of these jobs that may go with them: in the workspace folder, not
    one a live job works in, nor one a later job resumed in within retention.workspaces."""
    folder = _own_workspace_dir(r)
    keep = r.cfg.retention.workspaces
    out = []
    for rec in records:
        ws = rec.get("workspace")
        if folder is None or not isinstance(ws, str) or Path(ws).parent != folder:
            continue
        later = known.resumed_ends.get(ws.rstrip("/"))
        if ws.rstrip("/") in known.live_workspaces or (
                later is not None and (keep is None or now - later < keep)):
            continue
        out.append(ws)
    return out


# -- a pass ----------------------------------------------------------------------------------

def _guarded(r: Reaper, part: str, fn: Callable[[], object]) -> None:
    """Run one part; an OSError (a full or failing disk) is logged, the pass goes on."""
    try:
        fn()
    except OSError as exc:
        r.log.error("reaper part failed; tried again next pass", part=part, error=str(exc))


def one_pass(r: Reaper) -> Counter[str]:
    """Everything the reaper removes, once; the counts of this pass (also recorded)."""
    now = r.clock.time()
    did: Counter[str] = Counter()
    ws = _own_workspace_dir(r) or r.cfg.workspace_dir

    def sweeps() -> None:
        tmp, corrupted = sweep.sweep(r.layout, ws, r.cfg.reaper.grace,
                                     r.cfg.retention.corrupted, now)
        for path in tmp:
            r.removed(did, "tmp", path, "temp file of an unfinished write")
        for path in corrupted:
            r.removed(did, "corrupted", path, "quarantined past retention.corrupted")

    _guarded(r, "tmp and corrupted", sweeps)
    _guarded(r, "retention", lambda: _resume_step(r, now, did))
    try:
        view = open_view(r.cfg, r.layout)
    except Unreadable as exc:
        r.log.error("job queue unreadable: no job-related reaping this pass", error=str(exc))
        _guarded(r, "state", lambda: _record(r, did))
        return did
    with view:
        known = Known.read(view)
        _guarded(r, "processes", lambda: reap_processes(r, known, now, did))
        _guarded(r, "workspaces", lambda: reap_workspaces(r, known, now, did))
        _guarded(r, "job folders", lambda: reap_job_folders(r, known, now, did))
        _guarded(r, "mirrors", lambda: reap_mirrors(r, known, now, did))
        _guarded(r, "locks", lambda: asks.ask_locks(
            r.layout, known, now, r.cfg.reaper.grace, asks.count(did, r.removed)))
        _guarded(r, "retention", lambda: forget_expired(
            r, view, known, now, did, older_than=r.cfg.retention.jobs))
    _guarded(r, "callbacks", lambda: asks.ask_callbacks(
        r.layout, now, r.cfg.retention.callbacks, r.cfg.reaper.grace,
        asks.count(did, r.removed)))
    _guarded(r, "replies", lambda: _prune_replies(r, now))
    _guarded(r, "state", lambda: _record(r, did))
    return did


def _resume_step(r: Reaper, now: float, did: Counter[str]) -> None:
    def read(ids: Sequence[str]) -> list[dict[str, Any]]:
        with open_view(r.cfg, r.layout) as view:
            return _records(view, list(ids))
    step, note = forget.resume(r.layout, read, now)
    if note is not None:
        r.log.warning(note)
        r.notes.append(note)
    if step is not None:
        r.log.info("retention step finished after a crash", jobs=len(step["ids"]))


def _prune_replies(r: Reaper, now: float) -> None:
    folder = r.layout.reaper_replies
    for name in _listdir(folder):
        age = _mtime_age(folder / name, now)
        if age is not None and age > REPLY_KEEP:
            trash.discard(folder / name)


def _record(r: Reaper, did: Counter[str]) -> None:
    r.totals.update(did)
    ensure_dir(r.layout.worker_dir(NAME))
    write_record(WORKER_STATE, r.layout.worker_state(NAME), {
        "worker": NAME, "last_pass_at": iso_now(r.clock.time()),
        "removed": {k: did[k] for k in REAPED_KINDS},
        "totals": {k: r.totals[k] for k in REAPED_KINDS}})


# -- requests ----------------------------------------------------------------------------------

def clean(r: Reaper, req: dict[str, Any]) -> None:
    """`batchctl clean`: forget finished jobs now (older than `older_than` seconds, of
    `states`), as retention does; the reply lists what went."""
    reply = r.layout.reaper_replies / f"{req['id']}.json"
    if reply.exists():
        return                                       # answered already: a replay
    older = req.get("older_than", 0.0)
    states = req.get("states") or []
    if not isinstance(older, int | float) or older < 0 or not isinstance(states, list) \
            or not set(states) <= TERMINAL_STATES:
        raise BadRequest("'older_than' must be seconds >= 0 and 'states' finished states")
    now = r.clock.time()
    did: Counter[str] = Counter()
    with open_view(r.cfg, r.layout) as view:
        known = Known.read(view)
        gone = forget_expired(r, view, known, now, did, older_than=float(older),
                              states=tuple(states), why="clean")
    _record(r, did)
    ensure_dir(r.layout.reaper_replies)
    write_record(REPLY, reply, {
        "id": req["id"], "ok": True, "message": f"{len(gone)} job(s) forgotten",
        "result": [{"id": e.id, "state": e.state, "finished_at": e.finished_at, "why": e.why}
                   for e in gone]})


#: request kind -> handler.
HANDLERS: dict[str, Callable[[Reaper, dict[str, Any]], None]] = {"clean": clean}


# -- the worker --------------------------------------------------------------------------------

def recover(cfg: Config, layout: Layout, log: Log, *, clock: Clock = SYSTEM_CLOCK
            ) -> tuple[Reaper, dict[str, Any], dict[str, Any], list[str]]:
    """Read the totals, finish a retention step a crash cut short, do a first pass:
    (reaper, found, did, degraded)."""
    ensure_dir(layout.worker_dir(NAME))
    path = layout.worker_state(NAME)
    r = Reaper(cfg, layout, log, clock)
    degraded: list[str] = []
    rec = read_record(WORKER_STATE, path, owner=True)
    if isinstance(rec, dict):
        totals = rec.get("totals")
        if isinstance(totals, dict) and all(isinstance(v, int) for v in totals.values()):
            r.totals.update({k: v for k, v in totals.items() if k in REAPED_KINDS})
        elif isinstance(rec.get("total_removed"), int):           # before the kinds
            r.totals["tmp"] = rec["total_removed"]
        else:
            rec = Corrupt(str(path), quarantine(path), "'totals' must map kinds to integers")
    if isinstance(rec, Corrupt):
        log.warning("reaper state corrupt, totals restart from 0", path=str(path),
                    moved_to=rec.moved_to, reason=rec.reason)
        degraded.append(f"reaper state was corrupt: moved to {rec.moved_to}")
    did = one_pass(r)
    degraded += r.notes
    return r, {"totals": dict(r.totals)}, {k: did[k] for k in REAPED_KINDS if did[k]}, degraded


def serve(r: Reaper, watcher: Watcher, textfile: Textfile | None = None) -> None:
    """Requests as they come; a pass every reaper.interval, and when an orphan's SIGKILL
    is due; the metrics textfile when it is due (reaper.textfile)."""
    inbox = r.layout.inbox(NAME)
    next_pass = r.clock.monotonic() + r.cfg.reaper.interval
    while not stop_requested():
        wait = next_pass - r.clock.monotonic()
        assert r.orphans is not None
        due = r.orphans.next_due()
        if due is not None:
            wait = min(wait, due - r.clock.time())
        if textfile is not None and textfile.wait() is not None:
            wait = min(wait, textfile.wait() or 0.0)
        if watcher.wait(max(0.0, wait)) and not stop_requested():
            _guarded(r, "inbox", lambda: handle_inbox(inbox, HANDLERS, r, r.log))
        kill_due = due is not None and r.clock.time() >= due
        if (r.clock.monotonic() >= next_pass or kill_due) and not stop_requested():
            one_pass(r)
            if r.clock.monotonic() >= next_pass:
                next_pass = r.clock.monotonic() + r.cfg.reaper.interval
        if textfile is not None and not stop_requested():
            textfile.tick()


def main(cfg: Config) -> int:
    """Recover (a first pass), report ready, then serve until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        got = until_written("recovery", lambda: recover(cfg, layout, log), log)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    if got is None:
        return EXIT_OK                        # stopped while the disk was full
    r, found, did, degraded = got
    with Watcher([layout.inbox(NAME)], log=log) as watcher:
        report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                     started_monotonic=started, started_at=started_at)
        log.info("ready", **found, **did)
        textfile = Textfile(cfg, layout, log, clock=r.clock)
        textfile.tick()
        serve(r, watcher, textfile)
    return EXIT_OK
