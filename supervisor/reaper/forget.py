"""Forgetting finished jobs: archive the record, remove the folders, then the queue entry.

One step forgets a batch of jobs, in this order, each durable before the next:

    1. reaper/forgetting.json  {ids, workspaces, sizes, archived: false, request}
       (`sizes`: each archive file's size before this step appends to it)
    2. the records appended to history/YYYY-MM.jsonl.gz (one gzip member per file, fsync)
    3. reaper/forgetting.json  archived: true
    4. each job's folder and workspace removed (renamed to `.reap.<name>`, then deleted)
    5. a `forget` request in the scheduler's inbox (its id fixed by the step): the
       scheduler, the queue's one writer, drops the jobs (finished ones only)
    6. reaper/forgetting.json removed

A crash anywhere leaves the record of step 1 or 3 (or nothing: before 1, nothing was
done; after 6, all was). `resume` finishes it: not archived yet -> the archive files are
cut back to `sizes` (a torn or complete append is undone) and the records, read again
from the queue (the scheduler was not asked yet, so they are all there), are appended;
archived -> steps 4-6 again (each is idempotent: a folder already gone, a request already
written or already taken). So a record is archived exactly once, and no job leaves the
queue before its record is in the archive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.reaper import trash
from supervisor.state import archive
from supervisor.state.atomic import Corrupt, Missing, ensure_dir, quarantine, remove
from supervisor.state.clock import iso_now
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import FORGETTING, Layout, read_record, send_request, write_record

__all__ = ["BATCH", "Step", "begin", "resume"]

#: At most this many jobs per step (the step record lists them all).
BATCH = 1000

#: One step as reaper/forgetting.json holds it.
Step = dict[str, Any]
#: Job ids -> their records as the archive keeps them (read from the queue).
Records = Callable[[Sequence[str]], list[dict[str, Any]]]


def _request_id(ids: Sequence[str]) -> str:
    return "forget-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]


def begin(layout: Layout, records: Sequence[Mapping[str, Any]], workspaces: Sequence[str],
          now: float, *, fs: FS = REAL) -> Step:
    """Forget the jobs of `records` (their contract records, as the archive keeps them)
    and remove `workspaces` (theirs, when no live job uses them): steps 1-6."""
    ids = [str(r["id"]) for r in records]
    step: Step = {"ids": ids, "workspaces": list(workspaces), "archived": False,
                  "sizes": archive.sizes(layout, records, fs=fs),
                  "request": _request_id(ids), "started_at": iso_now(now)}
    ensure_dir(layout.forgetting_file.parent, fs=fs)
    write_record(FORGETTING, layout.forgetting_file, step, fs=fs)
    _archive(layout, step, records, now, fs=fs)
    _finish(layout, step, fs=fs)
    return step


def _archive(layout: Layout, step: Step, records: Sequence[Mapping[str, Any]], now: float,
             *, fs: FS) -> None:
    stamped = [{**r, "forgotten_at": iso_now(now)} for r in records]
    archive.append(layout, stamped, fs=fs)
    step["archived"] = True
    write_record(FORGETTING, layout.forgetting_file, step, fs=fs)


def _finish(layout: Layout, step: Step, *, fs: FS) -> None:
    trash.discard_many([*map(layout.job_dir, step["ids"]), *map(Path, step["workspaces"])])
    send_request(layout, "scheduler", {"id": step["request"], "kind": "forget",
                                       "jobs": step["ids"]}, fs=fs)
    remove(layout.forgetting_file, fs=fs)


def resume(layout: Layout, read: Records, now: float, *,
           fs: FS = REAL) -> tuple[Step | None, str | None]:
    """Finish the step a crash cut short: (the step, or None if there was none; a note
    when its record was corrupt and moved aside — then its jobs are simply chosen again
    by the next pass, and an append it may have made could show twice in the archive)."""
    rec = read_record(FORGETTING, layout.forgetting_file, owner=True, fs=fs)
    if isinstance(rec, Missing):
        return None, None
    if isinstance(rec, Corrupt) or not _well_formed(rec):
        moved = rec.moved_to if isinstance(rec, Corrupt) else \
            quarantine(layout.forgetting_file, fs=fs)
        return None, (f"the retention step record was corrupt (moved to {moved}); its jobs "
                      "are taken up again, and the archive may hold some of them twice")
    step: Step = rec
    if not step["archived"]:
        archive.truncate(layout, step["sizes"], fs=fs)
        _archive(layout, step, read(step["ids"]), now, fs=fs)
    _finish(layout, step, fs=fs)
    return step, None


def _well_formed(rec: Mapping[str, Any]) -> bool:
    ids, sizes = rec.get("ids"), rec.get("sizes")
    return (isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            and isinstance(rec.get("workspaces"), list)
            and isinstance(sizes, dict)
            and all(archive.MONTH.fullmatch(k) and isinstance(v, int) for k, v in sizes.items())
            and isinstance(rec.get("archived"), bool) and isinstance(rec.get("request"), str))
