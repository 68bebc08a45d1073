"""The outbox: the callbacks worker's DELIVERY records, live ones apart from settled ones.

`callbacks/outbox/<event id>.json` holds a delivery while it is pending or in flight and is
read whole at every start; `callbacks/done/<event id>.json` holds it once delivered or
failed and is never read at start, so a start costs what is still to be delivered, not
the history. docs/CALLBACKS.md has the moves between the two and their crash windows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from supervisor.runtime import Log
from supervisor.state.atomic import (
    CORRUPT_MARK,
    Corrupt,
    Missing,
    discard,
    ensure_dir,
    is_tmp_name,
    quarantine,
    remove,
)
from supervisor.state.clock import parse_iso
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import (
    DELIVERY,
    PRUNED,
    read_record,
    write_record,
    write_records,
)
from supervisor.state.webhook import SETTLED_STATES, delivery_problem, read_pruned

__all__ = ["DirOutbox", "GroupFS", "Outbox", "Scan"]


class _Folder:
    """One folder's shared fsync: how many were started and how many have ended."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.started = 0
        self.done = 0
        self.running = False


class GroupFS:
    """An FS whose folder fsyncs are shared by the sending threads that ask for them at
    about the same time (group commit, as the WAL's appends share an fdatasync).

    A rename is durable once an fsync of its folder that STARTED after the rename has
    ended: a thread asking while one runs waits for it, then for the next one, which it
    starts or shares with every thread that asked meanwhile. So each write still returns
    only once its folder is fsynced (law 2), with fewer fsyncs when writes come together.
    Everything else is `inner`'s."""

    def __init__(self, inner: FS = REAL) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._folders: dict[str, _Folder] = {}

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            folder = self._folders.setdefault(path, _Folder())
        with folder.cond:
            need = folder.started + 1        # the first fsync to start after this call
            while folder.done < need:
                if folder.running:
                    folder.cond.wait()
                    continue
                folder.running = True
                folder.started += 1
                mine = folder.started
                folder.cond.release()
                error: BaseException | None = None
                try:
                    self.inner.fsync_dir(path)
                except BaseException as exc:  # noqa: BLE001 - raised below, lock held again
                    error = exc
                folder.cond.acquire()
                folder.running = False
                if error is None:
                    folder.done = mine
                folder.cond.notify_all()
                if error is not None:
                    raise error

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return self.inner.open(path, flags, mode)

    def write(self, fd: int, data: bytes) -> None:
        self.inner.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self.inner.pwrite(fd, data, offset)

    def read(self, fd: int, n: int) -> bytes:
        return self.inner.read(fd, n)

    def fsync(self, fd: int) -> None:
        self.inner.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.inner.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self.inner.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        self.inner.close(fd)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)

    def mkdir(self, path: str) -> None:
        self.inner.mkdir(path)

    def read_file(self, path: str) -> bytes:
        return self.inner.read_file(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def size(self, path: str) -> int:
        return self.inner.size(path)

    def mtime(self, path: str) -> float:
        return self.inner.mtime(path)


class Scan:
    """What a start found in the live folder: the records, notes on unusable ones, and how
    many settled records were moved to the done folder (a crash window, or an old layout)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.moved = 0
        self.duplicates = 0


class Outbox(Protocol):
    """Where DELIVERY records live (the real one is two folders; tests may use a dict).

    Every method is called by the one thread that owns the record at that moment (the
    worker's main thread, or the sending thread a try was handed to)."""

    def scan(self) -> Scan:
        """Every live (pending, in flight) record; unusable ones are moved aside."""
        ...

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The record of `event_id` wherever it is, or None."""
        ...

    def exists(self, event_id: str) -> bool:
        """True if a record of `event_id` is live or settled."""
        ...

    def put(self, rec: dict[str, Any], *, moved: bool = False, durable: bool = True
            ) -> None:
        """Write `rec` atomically (and durably unless `durable` is False: a first try's
        in_flight record, whose request stays in the inbox meanwhile) where its state
        belongs; `moved`: its state changed between live and settled, so the copy in the
        other folder is then removed (durably when a settled record comes back to life; a
        live copy left behind by a settled one may come back at a power cut: the next
        start removes it)."""
        ...

    def put_many(self, recs: Sequence[dict[str, Any]], drop: Sequence[Path] = ()) -> None:
        """Write the outcomes of several tries at once (each record as `put(rec,
        moved=<settled now>)` would from in_flight): every record durable, with one fsync
        per folder for all of them, before any live copy of a settled one is removed and
        before the requests `drop` (of the new events among them) are removed (neither
        removal fsynced: a copy or a request that comes back finds the record)."""
        ...

    def delete(self, event_id: str) -> None:
        """Remove a live record (a held batch event superseded before any try)."""
        ...

    def prune(self, event_ids: Sequence[str], older_than: float, now: float
              ) -> list[tuple[str, str]]:
        """Remove the settled records of `event_ids` whose last change is `older_than`
        seconds before `now`, counted in the pruned record; (id, outcome) of each."""
        ...

    def finish_prune(self) -> int:
        """Finish a removal a crash cut short (the pruned record's step); how many went."""
        ...


class DirOutbox:
    """`callbacks/outbox/` (live) and `callbacks/done/` (settled), one record per event."""

    def __init__(self, folder: Path, log: Log, *, done: Path | None = None,
                 requests: Path | None = None, pruned: Path | None = None,
                 fs: FS = REAL) -> None:
        self.folder = folder
        self.done = done if done is not None else folder.parent / "done"
        self.requests = requests if requests is not None else folder.parent / "inbox"
        self.pruned = pruned if pruned is not None else folder.parent / "pruned.json"
        self.log = log
        self.fs = fs

    def _path(self, event_id: str, settled: bool) -> Path:
        return (self.done if settled else self.folder) / f"{event_id}.json"

    def _read(self, path: Path) -> dict[str, Any] | str | None:
        """The record, a note saying it was moved aside, or None (not there)."""
        rec = read_record(DELIVERY, path, owner=True, fs=self.fs)
        if isinstance(rec, Corrupt):
            moved, reason = rec.moved_to, rec.reason
        elif isinstance(rec, dict):
            problem = delivery_problem(rec)
            if problem is None and rec["id"] == path.name.removesuffix(".json"):
                return rec
            reason = problem or f"id {rec['id']!r} does not match the file name"
            moved = quarantine(path, fs=self.fs)
        else:
            return None
        self.log.warning("corrupt delivery quarantined", path=str(path), moved_to=moved,
                         reason=reason)
        return f"callback delivery {path.name} was corrupt: moved to {moved}"

    def scan(self) -> Scan:
        """Read the live folder. A record also found settled is the end of a move whose
        last step (removing the live copy) a crash cut: the settled copy wins (an operator
        retry cut there is replayed from the inbox). A settled record in the live folder
        (a layout before the done folder) is moved there."""
        ensure_dir(self.folder, fs=self.fs)
        ensure_dir(self.done, fs=self.fs)
        found = Scan()
        for name in sorted(self.fs.listdir(str(self.folder))):
            if is_tmp_name(name) or CORRUPT_MARK in name or not name.endswith(".json"):
                continue
            if self._torn_first_try(name):
                continue
            got = self._read(self.folder / name)
            if isinstance(got, str):
                found.notes.append(got)
            if not isinstance(got, dict):
                continue
            if self.fs.exists(str(self._path(got["id"], True))):
                remove(self.folder / name, fs=self.fs)
                found.duplicates += 1
            elif got["state"] in SETTLED_STATES:
                self.put(got, moved=True)
                found.moved += 1
            else:
                found.records.append(got)
        return found

    def _torn_first_try(self, name: str) -> bool:
        """A first try's in_flight record is written without fsync while its request
        stays in the inbox: one that a power cut left unusable, beside its request, is
        no corruption but that try undone. It is removed (True); the request does the
        try again."""
        if not self.fs.exists(str(self.requests / name)):
            return False
        path = self.folder / name
        rec = read_record(DELIVERY, path, owner=False, fs=self.fs)
        if isinstance(rec, dict) and delivery_problem(rec) is None \
                and rec["id"] == name.removesuffix(".json"):
            return False
        if isinstance(rec, Missing):
            return True
        remove(path, fs=self.fs)
        self.log.info("a first try's record was cut by a power cut: removed; its request "
                      "is still in the inbox and makes it again", path=str(path))
        return True

    def get(self, event_id: str) -> dict[str, Any] | None:
        for settled in (False, True):
            got = self._read(self._path(event_id, settled))
            if isinstance(got, dict):
                return got
        return None

    def exists(self, event_id: str) -> bool:
        return any(self.fs.exists(str(self._path(event_id, settled)))
                   for settled in (False, True))

    def put(self, rec: dict[str, Any], *, moved: bool = False, durable: bool = True
            ) -> None:
        settled = rec["state"] in SETTLED_STATES
        path = self._path(rec["id"], settled)
        try:
            write_record(DELIVERY, path, rec, fs=self.fs, durable=durable)
        except FileNotFoundError:          # the folder is made at start; made again if gone
            ensure_dir(path.parent, fs=self.fs)
            write_record(DELIVERY, path, rec, fs=self.fs, durable=durable)
        if moved and settled:
            discard(self._path(rec["id"], False), fs=self.fs)    # the settled copy wins
        elif moved:
            remove(self._path(rec["id"], True), fs=self.fs)

    def put_many(self, recs: Sequence[dict[str, Any]], drop: Sequence[Path] = ()) -> None:
        items = [(self._path(rec["id"], rec["state"] in SETTLED_STATES), rec) for rec in recs]
        try:
            write_records(DELIVERY, items, fs=self.fs)
        except FileNotFoundError:          # the folder is made at start; made again if gone
            ensure_dir(self.folder, fs=self.fs)
            ensure_dir(self.done, fs=self.fs)
            write_records(DELIVERY, items, fs=self.fs)
        for rec in recs:
            if rec["state"] in SETTLED_STATES:
                discard(self._path(rec["id"], False), fs=self.fs)   # the settled copy wins
        for request in drop:
            discard(request, fs=self.fs)

    def delete(self, event_id: str) -> None:
        remove(self._path(event_id, False), fs=self.fs)

    # -- retention.callbacks (the reaper asks, this worker removes) ---------------------------
    def finish_prune(self) -> int:
        """Remove what the pruned record's step still names (a crash cut that removal
        short: its files are counted already), then fsync the folder, so a step is durable
        before the next one replaces it. How many files went."""
        counts, bad = read_pruned(self.pruned, owner=True, fs=self.fs)
        if bad is not None:
            self.log.warning("pruned-deliveries record corrupt: its counts restart from 0",
                             path=bad.path, moved_to=bad.moved_to, reason=bad.reason)
        gone = sum(discard(self._path(i, True), fs=self.fs) for i in counts["step"])
        if counts["step"]:
            self.fs.fsync_dir(str(self.done))
        return gone

    def prune(self, event_ids: Sequence[str], older_than: float, now: float
              ) -> list[tuple[str, str]]:
        self.finish_prune()
        due: list[tuple[str, str]] = []
        for event_id in dict.fromkeys(event_ids):
            rec = self._read(self._path(event_id, True))
            if not isinstance(rec, dict) or rec["state"] not in SETTLED_STATES:
                continue
            changed = parse_iso(rec.get("updated_at"))
            if changed is None or now - changed < older_than:
                continue
            due.append((event_id, str(rec["state"])))
        if not due:
            return []
        counts, _ = read_pruned(self.pruned, owner=True, fs=self.fs)
        for _, outcome in due:
            counts[outcome] += 1
        counts["step"] = [event_id for event_id, _ in due]
        write_record(PRUNED, self.pruned, counts, fs=self.fs)
        for event_id, _ in due:
            discard(self._path(event_id, True), fs=self.fs)
        self.fs.fsync_dir(str(self.done))
        return due
