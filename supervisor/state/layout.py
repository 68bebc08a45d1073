"""The on-disk contract: every name under state_dir, who writes it, and each record's format.

This is the one place that knows the state directory's layout. Each record kind has a
schema name and version; `read_record` tells a missing file from a corrupt one and
quarantines the corrupt one (only the owner may: readers pass `owner=False`).

    <state_dir>/
      batchd.lock                 parent   never replaced; a held POSIX lock = batchd is alive
      batchd.pid                  parent   record "pid": pid + start time of the running batchd
      workers.json                parent   record "workers": each worker's process state
      startup-log.json            parent   record "startup_log": the last 10 startups
      repos.json                  batchctl record "repos": repositories added by `repo add`
      repos.lock                  batchctl empty, never written: flock serializes `repo add/remove`
      agent-versions.json         batchctl record "agent_versions": each agent binary's
                                           `--version`, keyed by path, mtime and size (a cache)
      mirrors/<name>.git          scheduler bare `git clone --mirror` of each repository, fetched
                                           under the repository's lock (supervisor.state.repos)
      control/inbox/<req>.json    batchctl request "control" (start/stop/restart/shutdown/reload)
      control/replies/<req>.json  parent   record "reply" to one control request
      ready/<worker>.json         worker   record "ready": recovery done (pid, found, did)
      scheduler/inbox/            batchctl requests to the scheduler (submit, cancel)
      scheduler/wal/              scheduler the job-queue write-ahead log (segments, snapshot)
      scheduler/submit.lock       batchctl  empty, never written: flock serializes submitters
      api/tokens, api/tokens.lock batchctl record "tokens" (hashes only); flock serializes writers
      api/submissions/            api      the submission log: a WAL of the POSTed jobs, read
                                           and enqueued by the scheduler (state.sublog)
      locks/inbox/, locks/state.json, locks/wants/<page>.json   locks worker
      callbacks/inbox/, callbacks/outbox/, callbacks/done/   callbacks worker
      reaper/inbox/, reaper/state.json        reaper worker
      reaper/forgetting.json      reaper   record "forgetting": a retention step in progress
      reaper/replies/<req>.json   reaper   record "reply" to a `clean` request
      history/YYYY-MM.jsonl.gz    reaper   the archive: forgotten jobs' records, appended as
                                           gzip members (supervisor.state.archive)
      jobs/<id>/                  adaptor  prompt, output, events.jsonl, sentinel.json, result.json,
                                           changes.patch and changes.json (what the job changed,
                                           written before result.json), adaptor.log
                                           (launcher-opened, adaptor-written), adaptor.lock
                                           (flock held by the live adaptor); spec.json: scheduler
      workspaces/<id>/            scheduler (created), the job (contents)
      workspaces/.prep.<id>+<t>/  scheduler a workspace being cloned (renamed to <id> when whole)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import OPTIONAL_WORKERS, WORKER_NAMES
from supervisor.state.atomic import (
    Corrupt,
    Missing,
    dump_json,
    ensure_dir,
    read_json,
    write_json,
    write_many,
)
from supervisor.state.fs import FS, REAL

__all__ = [
    "AGENT_VERSIONS",
    "CHANGES",
    "CONTROL",
    "DELIVERY",
    "FORGETTING",
    "JOB_ENDED",
    "JOB_SPEC",
    "LOCK_WANTS",
    "PAUSED",
    "PID",
    "PRUNED",
    "READY",
    "REAPED_KINDS",
    "REPLY",
    "REPOS",
    "REQUEST",
    "RESULT",
    "SENTINEL",
    "STARTUP_LOG",
    "TOKENS",
    "WORKERS",
    "WORKER_STATE",
    "WORKSPACE_PREP",
    "WORKSPACE_PREP_SEP",
    "JobPaths",
    "Layout",
    "RecordKind",
    "mirror_path",
    "read_record",
    "send_request",
    "staging_owner",
    "workspace_staging",
    "write_record",
    "write_records",
]

@dataclass(frozen=True)
class RecordKind:
    """One kind of JSON record: its schema name, current version and required keys."""

    schema: str
    version: int
    required: tuple[str, ...] = ()

    def validate(self, obj: Any) -> str | None:
        """None if `obj` is a well-formed record of this kind, else why it is not."""
        if not isinstance(obj, dict):
            return f"expected a JSON object, found {type(obj).__name__}"
        if obj.get("schema") != self.schema:
            return f"schema is {obj.get('schema')!r}, expected {self.schema!r}"
        if obj.get("v") != self.version:
            return f"schema version is {obj.get('v')!r}, this batchd reads {self.version}"
        missing = [k for k in self.required if k not in obj]
        if missing:
            return f"missing keys: {', '.join(missing)}"
        return None


PID = RecordKind("batchd.pid", 1, ("pid", "start", "started_at"))
WORKERS = RecordKind("batchd.workers", 1, ("workers",))
STARTUP_LOG = RecordKind("batchd.startup_log", 1, ("startups",))
READY = RecordKind("batchd.ready", 1, ("worker", "pid", "start", "ready_at"))
CONTROL = RecordKind("batchd.control", 1, ("id", "op"))
REPLY = RecordKind("batchd.reply", 1, ("id", "ok"))
#: A request dropped into a worker's inbox (`<worker>/inbox/<id>.json`) by batchctl or a peer.
REQUEST = RecordKind("batchd.request", 1, ("id", "kind"))
#: A worker's own small state file (`<worker>/state.json`), e.g. the locks held.
WORKER_STATE = RecordKind("batchd.worker_state", 1, ("worker",))
#: One page of the lock table's waiting jobs (`locks/wants/<page>.json`), owned by locks.
LOCK_WANTS = RecordKind("batchd.lock_wants", 1, ("wants",))
#: What the scheduler hands an adaptor (`jobs/<id>/spec.json`), written before launch.
JOB_SPEC = RecordKind("batchd.job_spec", 1, ("id", "adaptor", "prompt", "workspace"))
#: The adaptor's heartbeat (`jobs/<id>/sentinel.json`), refreshed every heartbeat_interval.
SENTINEL = RecordKind("batchd.sentinel", 1, ("id", "pid", "start", "heartbeat_at"))
#: The adaptor's last word (`jobs/<id>/result.json`), written once, atomically, on exit.
RESULT = RecordKind("batchd.result", 1, ("id", "exit_code", "finished_at"))
#: What a job changed (`jobs/<id>/changes.json`), written once by the adaptor after the agent
#: exited, after changes.patch and before result.json: per repository its base, head,
#: commits, files (each path's status, modes, line counts) and the push (adaptors._changes).
CHANGES = RecordKind("batchd.changes", 1, ("id", "repos", "patch"))
#: The scheduler's first decision of a job's end (`jobs/<id>/ended.json`: state and the
#: terminal `fields`), written before anything outside the WAL acts on it (webhook and batch
#: events, a retry, a Slurm job ended without a result) and before the terminal state: a
#: finalize after a crash takes it instead of deciding again; a copy Slurm runs after all
#: (a slurmctld crash can bring a cancelled job back) finds it and refuses to run.
JOB_ENDED = RecordKind("batchd.job_ended", 1, ("id", "state", "ended_at"))
#: Repositories registered with `batchctl repo add` (`repos.json`): {repos: {name: {url,
#: branch, exclusive}}}, added to the config's. Read by batchctl submit to validate --repo.
REPOS = RecordKind("batchd.repos", 1, ("repos",))
#: The scheduler's pause flag (`scheduler/paused.json`): {paused, since}; written only by
#: the scheduler (batchctl pause/resume ask through its inbox).
PAUSED = RecordKind("batchd.paused", 1, ("paused",))
#: A retention step of the reaper (`reaper/forgetting.json`): the jobs being forgotten,
#: each archive file's size before their records were appended, whether that append is
#: durable. Present only while the step is under way (see supervisor.reaper.retention).
FORGETTING = RecordKind("batchd.forgetting", 1, ("ids", "sizes", "archived"))
#: What the reaper removes and counts, by kind (`reaper/state.json`: `removed` in the last
#: pass, `totals` since the record began; `batchctl stats` shows the totals as `reaped`).
#: `locks` and `callbacks` are removals the reaper asked of their owners (the locks worker,
#: the callbacks worker), which check again before they remove.
REAPED_KINDS = ("tmp", "corrupted", "processes", "workspaces", "job_folders", "jobs",
                "mirrors", "locks", "callbacks")
#: One webhook delivery (`callbacks/outbox/<event id>.json` while pending or in flight,
#: `callbacks/done/<event id>.json` once delivered or failed), owned by callbacks.
DELIVERY = RecordKind("batchd.delivery", 1, ("id", "url"))
#: Settled deliveries the callbacks worker removed past retention.callbacks
#: (`callbacks/pruned.json`, owned by callbacks): how many of each outcome, so the
#: counters outlive the records, and `step`, the ids of the last removal (written before
#: their files go: a reader does not count those files twice; a crash in it is finished
#: by the next removal or the next start).
PRUNED = RecordKind("batchd.callbacks_pruned", 1, ("delivered", "failed", "step"))
#: API tokens (`api.tokens_file`, default `api/tokens`), written only by batchctl:
#: {tokens: {name: {sha256, scope, created_at}}} (state.tokens).
TOKENS = RecordKind("batchd.tokens", 1, ("tokens",))
#: The `--version` of agent binaries (`agent-versions.json`), a cache owned by batchctl:
#: {binaries: {path: {mtime_ns, size, version}}}.
AGENT_VERSIONS = RecordKind("batchd.agent_versions", 1, ("binaries",))


def write_record(kind: RecordKind, path: str | os.PathLike[str], data: dict[str, Any],
                 *, fs: FS = REAL, mode: int = 0o644, durable: bool = True) -> None:
    """Atomically and durably write `data` as a record of `kind` (adds schema and v);
    `durable=False`: see atomic.write_bytes."""
    body = dict(data)
    body["schema"] = kind.schema
    body["v"] = kind.version
    write_json(path, body, fs=fs, mode=mode, durable=durable)


def write_records(kind: RecordKind, items: list[tuple[Path, dict[str, Any]]], *,
                  fs: FS = REAL) -> None:
    """Write several records of `kind` atomically and durably, one folder fsync per
    folder for all of them (atomic.write_many): each is durable when this returns."""
    out: list[tuple[str | os.PathLike[str], bytes]] = []
    for path, data in items:
        body = dict(data)
        body["schema"] = kind.schema
        body["v"] = kind.version
        out.append((path, dump_json(body)))
    write_many(out, fs=fs)


def read_record(kind: RecordKind, path: str | os.PathLike[str], *, owner: bool,
                fs: FS = REAL) -> dict[str, Any] | Missing | Corrupt:
    """Read a record of `kind`: the dict, Missing, or Corrupt (quarantined if `owner`).

    `owner` has no default: every reader says whether it owns the file (law 1), so one
    that forgets cannot move aside a file it does not own."""
    result = read_json(path, validate=kind.validate, fs=fs, move_corrupt=owner)
    if isinstance(result, (Missing, Corrupt)):
        return result
    assert isinstance(result, dict)
    return result


#: A workspace being made: `<workspace_dir>/.prep.<id>+<token>`, renamed to `<id>` when
#: whole. The token is fresh for every attempt (a `+` is never in a job id), so a git left
#: running by a killed scheduler writes only into its own abandoned folder.
WORKSPACE_PREP = ".prep."
WORKSPACE_PREP_SEP = "+"


def workspace_staging(ws: str | os.PathLike[str], token: str) -> Path:
    """The folder workspace `ws` is built in by the attempt `token` (then renamed to ws)."""
    path = Path(ws)
    return path.parent / f"{WORKSPACE_PREP}{path.name}{WORKSPACE_PREP_SEP}{token}"


def staging_owner(name: str) -> str | None:
    """The job id a workspace staging folder's name (`.prep.<id>+<token>`, or the older
    `.prep.<id>`) belongs to; None when `name` is not one."""
    if not name.startswith(WORKSPACE_PREP):
        return None
    return name[len(WORKSPACE_PREP):].partition(WORKSPACE_PREP_SEP)[0]


def mirror_path(mirrors_dir: str | os.PathLike[str], name: str) -> Path:
    """`<mirrors_dir>/<name>.git`: where repository `name` is mirrored (Layout.mirror)."""
    return Path(mirrors_dir) / f"{name}.git"


@dataclass(frozen=True)
class JobPaths:
    """The files of one job folder (`jobs/<id>/`): what the adaptor writes and the
    scheduler reads, named once. Pure names: nothing here touches the disk."""

    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def prompt(self) -> Path:
        """The prompt's exact bytes, written by the adaptor before the agent starts: the
        agent reads it as its stdin (or as a file, for aider)."""
        return self.dir / "prompt"

    @property
    def output(self) -> Path:
        return self.dir / "output"

    @property
    def events(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def sentinel(self) -> Path:
        return self.dir / "sentinel.json"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def ended(self) -> Path:
        """The scheduler's JOB_ENDED record of a Slurm job ended without a result."""
        return self.dir / "ended.json"

    @property
    def patch(self) -> Path:
        """The job's changes as one binary-safe patch (`diff JOB`), when results exist."""
        return self.dir / "changes.patch"

    @property
    def changes(self) -> Path:
        """What the job changed, per repository (CHANGES), written with the patch."""
        return self.dir / "changes.json"

    @property
    def lock(self) -> Path:
        """Held (flock, exclusive) by the job's adaptor for its whole life; never replaced."""
        return self.dir / "adaptor.lock"

    @property
    def adaptor_log(self) -> Path:
        """The adaptor's own stdout/stderr (diagnostics, not the job's output)."""
        return self.dir / "adaptor.log"


class Layout:
    """Paths under one state directory. Pure names: nothing here touches the disk."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)

    # -- the parent ------------------------------------------------------------
    @property
    def lock_file(self) -> Path:
        return self.root / "batchd.lock"

    @property
    def pid_file(self) -> Path:
        return self.root / "batchd.pid"

    @property
    def workers_file(self) -> Path:
        return self.root / "workers.json"

    @property
    def startup_log(self) -> Path:
        return self.root / "startup-log.json"

    @property
    def repos_file(self) -> Path:
        return self.root / "repos.json"

    @property
    def repos_lock(self) -> Path:
        """flock'ed (exclusive) by `batchctl repo add/remove` around its read and write of
        repos.json. Created empty with O_CREAT; never written, replaced or removed."""
        return self.root / "repos.lock"

    @property
    def agent_versions(self) -> Path:
        """The `--version` cache of agent binaries (`batchctl agents`)."""
        return self.root / "agent-versions.json"

    @property
    def mirrors_dir(self) -> Path:
        return self.root / "mirrors"

    def mirror(self, name: str) -> Path:
        """The bare mirror of repository `name`."""
        return mirror_path(self.mirrors_dir, name)

    @property
    def control_inbox(self) -> Path:
        return self.root / "control" / "inbox"

    @property
    def control_replies(self) -> Path:
        return self.root / "control" / "replies"

    def reply_file(self, request_id: str) -> Path:
        return self.control_replies / f"{request_id}.json"

    # -- the workers -----------------------------------------------------------
    @property
    def ready_dir(self) -> Path:
        return self.root / "ready"

    def ready_file(self, worker: str) -> Path:
        return self.ready_dir / f"{worker}.json"

    def worker_dir(self, worker: str) -> Path:
        return self.root / worker

    def inbox(self, worker: str) -> Path:
        return self.root / worker / "inbox"

    @property
    def wal_dir(self) -> Path:
        return self.root / "scheduler" / "wal"

    @property
    def paused_file(self) -> Path:
        """The scheduler's pause flag (PAUSED); missing: not paused."""
        return self.root / "scheduler" / "paused.json"

    @property
    def submit_lock(self) -> Path:
        """flock'ed (exclusive) by `batchctl submit` around its duplicate check and write.

        Created empty with O_CREAT by the first submit; never written, replaced or removed.
        """
        return self.root / "scheduler" / "submit.lock"

    @property
    def sublog_dir(self) -> Path:
        """The api's submission log (state.sublog): a WAL only the api appends to."""
        return self.root / "api" / "submissions"

    @property
    def tokens_file(self) -> Path:
        """Where API tokens live unless `api.tokens_file` says otherwise."""
        return self.root / "api" / "tokens"

    def worker_state(self, worker: str) -> Path:
        return self.root / worker / "state.json"

    @property
    def lock_pages(self) -> Path:
        """The lock table's waiting jobs, a few hundred per page file (locks worker)."""
        return self.root / "locks" / "wants"

    def lock_page(self, number: int) -> Path:
        return self.lock_pages / f"{number:08d}.json"

    @property
    def forgetting_file(self) -> Path:
        """The reaper's retention step in progress (FORGETTING); missing: none."""
        return self.root / "reaper" / "forgetting.json"

    @property
    def reaper_replies(self) -> Path:
        """The reaper's replies to `clean` requests (REPLY), one per request id."""
        return self.root / "reaper" / "replies"

    @property
    def history_dir(self) -> Path:
        return self.root / "history"

    def history_file(self, month: str) -> Path:
        """The archive of jobs that finished in `month` (YYYY-MM)."""
        return self.history_dir / f"{month}.jsonl.gz"

    @property
    def callbacks_outbox(self) -> Path:
        """Webhook deliveries still to be made: pending and in flight (read at every start)."""
        return self.root / "callbacks" / "outbox"

    @property
    def callbacks_done(self) -> Path:
        """Webhook deliveries that are settled: delivered and failed (never read at start)."""
        return self.root / "callbacks" / "done"

    @property
    def callbacks_pruned(self) -> Path:
        """How many settled deliveries were removed past retention.callbacks (PRUNED)."""
        return self.root / "callbacks" / "pruned.json"

    # -- jobs ------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @functools.cached_property
    def jobs_root_text(self) -> str:
        """str(jobs_dir), computed once (job records name thousands of outputs)."""
        return str(self.jobs_dir)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def job(self, job_id: str) -> JobPaths:
        """The files of job `job_id`'s folder."""
        return JobPaths(self.job_dir(job_id))

    def job_output(self, job_id: str) -> Path:
        return self.job(job_id).output

    def job_events(self, job_id: str) -> Path:
        return self.job(job_id).events

    def job_sentinel(self, job_id: str) -> Path:
        return self.job(job_id).sentinel

    def job_result(self, job_id: str) -> Path:
        return self.job(job_id).result

    def job_spec(self, job_id: str) -> Path:
        return self.job(job_id).spec

    def job_lock(self, job_id: str) -> Path:
        return self.job(job_id).lock

    def job_patch(self, job_id: str) -> Path:
        return self.job(job_id).patch

    def job_changes(self, job_id: str) -> Path:
        return self.job(job_id).changes

    def job_adaptor_log(self, job_id: str) -> Path:
        return self.job(job_id).adaptor_log

    def all_dirs(self) -> list[Path]:
        """The folders batchd creates at start (each owner creates its own again if missing)."""
        dirs = [self.root, self.control_inbox, self.control_replies, self.ready_dir,
                self.jobs_dir, self.wal_dir]
        dirs += [self.inbox(w) for w in WORKER_NAMES if w not in OPTIONAL_WORKERS]
        return dirs


#: Inbox folders this process has made durable (see send_request).
_ENSURED: set[str] = set()


def send_request(layout: Layout, worker: str, request: Mapping[str, Any], *,
                 fs: FS = REAL, durable: bool = True) -> Path:
    """Drop `request` (a REQUEST body with an "id") into `worker`'s inbox as
    `<inbox>/<id>.json`, atomically and durably; its path. The one way any process hands
    a worker a request (law 1: the inbox is the owner's door).

    The inbox folder is created and its parent fsynced once per process (a process killed
    between a mkdir and that fsync is covered by the next process's first call), not on
    every request. A crash before the rename leaves a temp file that is never read as a
    request; after it the request is whole, and its id names it, so a replay rewrites the
    same file and the owner handles it once.

    `durable=False` (a hint, whose truth is in another durable file: atomic.write_bytes)
    leaves out the fsyncs; the owner drops it torn and removes it without an fsync.
    """
    inbox = layout.inbox(worker)
    key = os.fspath(inbox)
    path = inbox / f"{request['id']}.json"
    if key not in _ENSURED:
        ensure_dir(inbox, fs=fs)
        _ENSURED.add(key)
    try:
        write_record(REQUEST, path, dict(request), fs=fs, durable=durable)
    except FileNotFoundError:            # the folder went away since: make it again
        _ENSURED.discard(key)
        ensure_dir(inbox, fs=fs)
        _ENSURED.add(key)
        write_record(REQUEST, path, dict(request), fs=fs, durable=durable)
    return path
