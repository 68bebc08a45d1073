"""The outbox: the callbacks worker's DELIVERY records, live ones apart from settled ones.

`callbacks/outbox/<event id>.json` holds a delivery while it is pending or in flight and is
read whole at every start; `callbacks/done/<event id>.json` holds it once delivered or
failed and is never read at start, so a start costs what is still to be delivered, not
the history. docs/CALLBACKS.md has the moves between the two and their crash windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from supervisor.runtime import Log
from supervisor.state.atomic import (
    CORRUPT_MARK,
    Corrupt,
    discard,
    ensure_dir,
    is_tmp_name,
    quarantine,
    remove,
)
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import DELIVERY, read_record, write_record
from supervisor.state.webhook import SETTLED_STATES, delivery_problem

__all__ = ["DirOutbox", "Outbox", "Scan"]


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

    def put(self, rec: dict[str, Any], *, moved: bool = False) -> None:
        """Write `rec` atomically and durably where its state belongs; `moved`: its state
        changed between live and settled, so the copy in the other folder is then removed
        (durably when a settled record comes back to life; a live copy left behind by a
        settled one may come back at a power cut: the next start removes it)."""
        ...

    def delete(self, event_id: str) -> None:
        """Remove a live record (a held batch event superseded before any try)."""
        ...


class DirOutbox:
    """`callbacks/outbox/` (live) and `callbacks/done/` (settled), one record per event."""

    def __init__(self, folder: Path, log: Log, *, done: Path | None = None,
                 fs: FS = REAL) -> None:
        self.folder = folder
        self.done = done if done is not None else folder.parent / "done"
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

    def get(self, event_id: str) -> dict[str, Any] | None:
        for settled in (False, True):
            got = self._read(self._path(event_id, settled))
            if isinstance(got, dict):
                return got
        return None

    def exists(self, event_id: str) -> bool:
        return any(self.fs.exists(str(self._path(event_id, settled)))
                   for settled in (False, True))

    def put(self, rec: dict[str, Any], *, moved: bool = False) -> None:
        settled = rec["state"] in SETTLED_STATES
        path = self._path(rec["id"], settled)
        try:
            write_record(DELIVERY, path, rec, fs=self.fs)
        except FileNotFoundError:          # the folder is made at start; made again if gone
            ensure_dir(path.parent, fs=self.fs)
            write_record(DELIVERY, path, rec, fs=self.fs)
        if moved and settled:
            discard(self._path(rec["id"], False), fs=self.fs)    # the settled copy wins
        elif moved:
            remove(self._path(rec["id"], True), fs=self.fs)

    def delete(self, event_id: str) -> None:
        remove(self._path(event_id, False), fs=self.fs)
