"""Workspaces made ahead: the next job in line for a repository held for a whole run gets
its workspace made while the holder runs, so its grant only renames it into place.

The locks worker names the job first in line behind an exclusive holder (a `next-<job>`
hint, state.locktable.next_in_line; at its start the scheduler reads the same from the lock
table). The scheduler's loop records it as wanted and, once no clone of this scheduler
uses its repositories, one background thread makes its workspace from the mirrors as they
are (jobfiles.make_ahead), in a staging folder of its own, `.prep.<id>+<token>`, beside
the workspace. At the grant the clone thread claims it, fetches the mirrors as always, and
uses it only when they still have the refs it was made from (prepare_workspace(made=));
otherwise it is removed here.

Safety: the mirrors are read, never written, here; each mirror has an in-process lock that
the clone of a granted job (which may fetch into it) holds, and a making holds while it
reads refs and links objects (not during its read-tree, which reads only its own folder),
so no making reads a mirror while this scheduler fetches into it. A workspace is recorded
as made only once whole, so a claim never gets a half-made one. Nothing here is state: a
scheduler that stops, dies or reopens its queue forgets it (law 4); its `.prep.` folders
are the job's leftovers like any attempt's, removed by the relaunch or, once the job is
over, by the reaper. docs/LOCKS.md has the argument.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from supervisor.config import Config, RepoConfig
from supervisor.runtime import Log
from supervisor.scheduler.jobfiles import Made, make_ahead
from supervisor.state.atomic import remove_tree
from supervisor.state.git import GitError

__all__ = ["MAX_AHEAD", "Ahead", "mirrors_held"]

#: At most this many workspaces are made ahead (made or being made) at once: each is a
#: whole checkout on the workspaces' filesystem.
MAX_AHEAD = 4

#: The mirrors' in-process locks, one per repository name, for the whole process (a
#: scheduler that reopens its queue after a failed write makes a new Ahead, not new locks).
_MIRROR_LOCKS: dict[str, threading.Lock] = {}
_MIRROR_LOCKS_LOCK = threading.Lock()


@contextmanager
def mirrors_held(names: Collection[str]) -> Iterator[None]:
    """Hold the in-process locks of these repositories' mirrors (in name order: two
    holders never wait for each other). The clone of a granted job holds them while it
    fetches and clones; a making ahead while it reads refs and links objects."""
    with _MIRROR_LOCKS_LOCK:
        locks = [_MIRROR_LOCKS.setdefault(n, threading.Lock()) for n in sorted(set(names))]
    for i, lock in enumerate(locks):
        try:
            lock.acquire()
        except BaseException:
            for held in locks[:i]:
                held.release()
            raise
    try:
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


class Ahead:
    """The workspaces made ahead of this scheduler.

    The loop thread calls want(), forget(), start() and close(); a clone thread calls
    claim() (before it takes mirrors_held()); the one making thread runs _make(). `_lock`
    guards the three maps.
    """

    def __init__(self, cfg: Config, mirrors_dir: Path, log: Log) -> None:
        self.cfg = cfg
        self.mirrors_dir = mirrors_dir
        self.log = log
        self._lock = threading.Lock()
        self._wanted: dict[str, dict[str, Any]] = {}    # job -> its entry when told
        self._making: dict[str, Future[None]] = {}
        self._made: dict[str, Made] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- the loop's side --------------------------------------------------------------------

    def want(self, entry: Mapping[str, Any]) -> bool:
        """Record a waiting job the locks worker says is next in line; False (nothing to
        do) for one whose workspace cannot be made ahead (a resume: it reuses another)."""
        job = str(entry["id"])
        if entry.get("resume_of") or not entry.get("repos"):
            return False
        with self._lock:
            if job in self._wanted:
                return False
            self._wanted[job] = dict(entry)
        return True

    def jobs(self) -> list[str]:
        """The jobs wanted, being made or made."""
        with self._lock:
            return list(self._wanted.keys() | self._making.keys() | self._made.keys())

    def forget(self, job: str) -> None:
        """The job will not be granted (it ended while it waited): drop it, and its
        workspace made ahead (removed on the making thread: a big tree takes a while)."""
        with self._lock:
            self._wanted.pop(job, None)
            made = self._made.pop(job, None)
        if made is not None:
            self.discard(made)

    def start(self, busy: Callable[[], Collection[str]],
              known: Callable[[], Mapping[str, RepoConfig]]) -> int:
        """Start making the workspaces wanted and not begun, none of whose repositories a
        clone of this scheduler uses now (`busy`: it holds the mirror; a making ahead
        would only delay it), at most MAX_AHEAD at once; how many were started."""
        started = 0
        repositories: dict[str, RepoConfig] | None = None
        used: Collection[str] | None = None      # asked only when a job is to start
        with self._lock:
            for job, entry in list(self._wanted.items()):
                if len(self._making) + len(self._made) >= MAX_AHEAD:
                    break
                if job in self._making or job in self._made:
                    continue
                repos = [str(r) for r in entry.get("repos") or []]
                used = busy() if used is None else used
                if any(r in used for r in repos):
                    continue
                repositories = dict(known()) if repositories is None else repositories
                self._making[job] = self.pool().submit(self._make, job, entry, repositories)
                started += 1
        return started

    def pool(self) -> ThreadPoolExecutor:
        """The one thread that makes workspaces ahead and removes stale ones."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahead")
        return self._pool

    def discard(self, made: Made) -> None:
        """Remove a workspace made ahead that will not be used (on the making thread)."""
        self.remove_later([made.staging])

    def remove_later(self, folders: list[Path]) -> None:
        """Remove these folders, made ahead and never to be used, on the making thread
        (in order with the makings: a big tree takes a while); here and now once that
        thread is stopped (close)."""
        for folder in folders:
            try:
                self.pool().submit(_remove, folder, self.log)
            except RuntimeError:                     # shut down: no thread to hand it to
                _remove(folder, self.log)

    # -- the clone thread's side -------------------------------------------------------------

    def claim(self, job: str) -> Made | None:
        """The job was granted: its workspace made ahead, if any; the job is not wanted
        any more. Its own making, when it runs, is waited for (a checkout begun is less to
        do than one to begin; the caller holds no mirror lock, which that making may
        need); one not begun yet is cancelled (the making thread may be busy with another
        job's, which this grant must not wait for)."""
        with self._lock:
            making = self._making.get(job)
            if making is not None and making.cancel():
                del self._making[job]
                making = None
        if making is not None:
            wait([making])
        with self._lock:
            self._wanted.pop(job, None)
            return self._made.pop(job, None)

    # -- the making thread ----------------------------------------------------------------------

    def _make(self, job: str, entry: dict[str, Any], known: dict[str, RepoConfig]) -> None:
        repos = [str(r) for r in entry.get("repos") or []]
        try:
            with self._lock:
                if job not in self._wanted:          # granted (claimed) or forgotten
                    return
            try:
                made = make_ahead(self.cfg, entry, repositories=known,
                                  mirrors_dir=self.mirrors_dir,
                                  locked=lambda: mirrors_held(repos))
            except (GitError, OSError) as exc:
                self.log.warning("workspace not made ahead", job=job, error=str(exc))
                made = None
            except Exception as exc:  # noqa: BLE001 - a bug here must not pass unseen
                self.log.error("workspace not made ahead: unexpected error", job=job,
                               error=f"{type(exc).__name__}: {exc}")
                made = None
            if made is None:            # declined or failed: not tried again at every
                with self._lock:        # pass (the grant clones it as always)
                    self._wanted.pop(job, None)
                return
            with self._lock:
                keep = job in self._wanted           # not claimed nor forgotten meanwhile
                if keep:
                    self._made[job] = made
            if keep:
                self.log.info("workspace made ahead", job=job, repos=repos)
            else:
                _remove(made.staging, self.log)
        finally:
            with self._lock:
                self._making.pop(job, None)

    def close(self, *, remove: bool = False) -> None:
        """Forget everything and stop the making thread: what it does now finishes (and,
        wanted no more, is removed), nothing queued starts. What was made is removed
        first when `remove` (a scheduler that reopens its queue and goes on), else left
        (one that stops: the next scheduler removes those of jobs still waiting; the
        reaper those of jobs that are over)."""
        with self._lock:
            self._wanted.clear()
            made = list(self._made.values())
            self._made.clear()
        if remove:
            self.remove_later([m.staging for m in made])
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=not remove)


def _remove(path: Path, log: Log) -> None:
    try:
        remove_tree(path)
    except OSError as exc:       # the reaper takes it once the job is over
        log.warning("cannot remove a workspace made ahead", path=str(path), error=str(exc))
