"""The outbox's two folders (callbacks.outbox): where each state lives, the moves between
them, what a start reads, power cuts during an operator retry's move (tests.crashfs), and
the folder fsyncs the sending threads share (GroupFS)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import log as _log
from supervisor.callbacks.outbox import DirOutbox, GroupFS
from supervisor.state.clock import iso_now
from supervisor.state.layout import DELIVERY, Layout, write_record
from supervisor.state.webhook import (
    begin,
    delivery_request,
    new_delivery,
    operator_retry,
    read_pruned,
)
from tests.crashfs import CrashFS, explore
from tests.helpers import CountingFS

T0 = 1_800_000_000.0
URL = "http://127.0.0.1:9/hook"


def outbox(root: Path, fs: Any = None) -> DirOutbox:
    layout = Layout(root)
    if fs is None:
        return DirOutbox(layout.callbacks_outbox, _log.get("test"), done=layout.callbacks_done,
                         pruned=layout.callbacks_pruned)
    return DirOutbox(layout.callbacks_outbox, _log.get("test"), done=layout.callbacks_done,
                     pruned=layout.callbacks_pruned, fs=fs)


def fresh(event_id: str) -> dict[str, Any]:
    return new_delivery(delivery_request(event_id, URL, {"event_id": event_id}, job="j"), T0)


def failed(event_id: str) -> dict[str, Any]:
    return {**begin(fresh(event_id), T0), "state": "failed", "next_attempt_at": None,
            "last_error": "HTTP 400"}


def names(root: Path) -> tuple[list[str], list[str]]:
    layout = Layout(root)
    return (sorted(os.listdir(layout.callbacks_outbox)),
            sorted(os.listdir(layout.callbacks_done)))


def test_live_and_settled_records_live_apart(tmp_path: Path) -> None:
    """Pending and in-flight records are in outbox/, delivered and failed ones in done/;
    a move writes the new place and removes the old one; get and exists see both."""
    box = outbox(tmp_path)
    box.scan()
    box.put(fresh("a"))
    box.put(begin(fresh("b"), T0))
    box.put(failed("c"))
    assert (["a.json", "b.json"], ["c.json"]) == names(tmp_path)
    box.put(failed("b"), moved=True)
    assert (["a.json"], ["b.json", "c.json"]) == names(tmp_path)
    box.put(operator_retry(failed("c"), T0), moved=True)
    assert (["a.json", "c.json"], ["b.json"]) == names(tmp_path)
    assert (True, True, False, "failed", None) == (
        box.exists("a"), box.exists("b"), box.exists("z"), (box.get("b") or {})["state"],
        box.get("z"))


def test_outcomes_written_together_land_where_their_states_belong(tmp_path: Path) -> None:
    """put_many (a group of outcomes): a settled record goes to done/ and its live
    in_flight copy goes, a retry stays in outbox/ rewritten, the requests named are
    dropped; one fsync per folder for the whole group (after every record's own)."""
    inbox = Layout(tmp_path).inbox("callbacks")
    inbox.mkdir(parents=True)
    box = outbox(tmp_path)
    box.scan()
    for event_id in ("a", "b", "c"):
        box.put(begin(fresh(event_id), T0), durable=False)
        (inbox / f"{event_id}.json").write_bytes(b"{}")
    box.fs = fs = CountingFS()
    retry = {**begin(fresh("c"), T0), "state": "pending", "next_attempt_at": iso_now(T0 + 9)}
    box.put_many([{**begin(fresh("a"), T0), "state": "delivered", "next_attempt_at": None},
                  failed("b"), retry], [inbox / "a.json", inbox / "b.json"])
    assert ((["c.json"], ["a.json", "b.json"]), ["c.json"], "pending",
            ["file", "file", "file", "done", "outbox"]) == (
        names(tmp_path), sorted(os.listdir(inbox)), (box.get("c") or {}).get("state"),
        fs.syncs)


def test_a_start_reads_only_the_live_folder(tmp_path: Path) -> None:
    """scan() returns the live records; settled ones are never opened (a damaged one in
    done/ is neither read nor moved)."""
    box = outbox(tmp_path)
    box.scan()
    box.put(fresh("a"))
    for i in range(50):
        box.put(failed(f"old{i}"))
    (Layout(tmp_path).callbacks_done / "broken.json").write_bytes(b"{")
    scan = box.scan()
    assert (["a"], [], 0) == ([r["id"] for r in scan.records], scan.notes, scan.moved)
    assert (Layout(tmp_path).callbacks_done / "broken.json").exists()


def test_delete_removes_a_live_record(tmp_path: Path) -> None:
    """delete() (a superseded batch event) removes the live record durably."""
    box = outbox(tmp_path)
    box.scan()
    box.put(fresh("a"))
    box.delete("a")
    assert ([], []) == names(tmp_path)


def test_a_missing_done_folder_is_made_again(tmp_path: Path) -> None:
    """A put after the done folder vanished makes it again instead of failing."""
    box = outbox(tmp_path)
    box.scan()
    os.rmdir(Layout(tmp_path).callbacks_done)
    box.put(failed("a"))
    assert ([], ["a.json"]) == names(tmp_path)


def test_a_damaged_live_record_is_quarantined_at_start(tmp_path: Path) -> None:
    """An unusable live record is moved aside and named in the notes."""
    Layout(tmp_path).callbacks_outbox.mkdir(parents=True)
    write_record(DELIVERY, Layout(tmp_path).callbacks_outbox / "a.json",
                 {**fresh("a"), "state": "lost"})
    scan = outbox(tmp_path).scan()
    assert ([], 1) == (scan.records, len(scan.notes))


def _picture(root: str) -> Any:
    """What a start makes of the folders: (state of e1, where it lives)."""
    box = outbox(Path(root))
    scan = box.scan()
    rec = box.get("e1")
    live = [r["id"] for r in scan.records]
    return "missing" if rec is None else (rec["state"], "e1" in live)


def test_a_power_cut_during_an_operator_retry_move(tmp_path: Path) -> None:
    """failed (done/) -> pending (outbox/, then done/ removed): a cut anywhere leaves
    the failed record (the retry request, still in the inbox, is replayed) or the pending
    one, never both and never none."""
    def setup(root: str) -> None:
        box = outbox(Path(root))
        box.scan()
        box.put(failed("e1"))

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        outbox(Path(root), fs).put(operator_retry(failed("e1"), T0 + 1), moved=True)
        yield

    report = explore(tmp_path, setup=setup, workload=workload, recover=_picture,
                     expected=[("failed", False), ("pending", True)])
    assert {0, 1} == set(report.recovered_to)


class SlowDirs:
    """An FS stand-in whose folder fsync takes 50 ms and notes (start, end) of each."""

    def __init__(self) -> None:
        self.syncs: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def fsync_dir(self, path: str) -> None:
        start = time.monotonic()
        time.sleep(0.05)
        with self.lock:
            self.syncs.append((start, time.monotonic()))


def test_group_fs_shares_folder_fsyncs_and_covers_every_caller() -> None:
    """Eight threads asking for a folder fsync at once: fewer fsyncs than asks, and each
    ask returns only after an fsync that started after it asked has ended (what makes
    its rename durable)."""
    inner = SlowDirs()
    group = GroupFS(inner)  # type: ignore[arg-type]
    asks: list[tuple[float, float]] = []

    def ask() -> None:
        t0 = time.monotonic()
        group.fsync_dir("/outbox")
        with inner.lock:
            asks.append((t0, time.monotonic()))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 8 == len(asks) and len(inner.syncs) < 8
    for asked, returned in asks:
        assert any(asked <= start and end <= returned for start, end in inner.syncs)


def test_group_fs_passes_an_fsync_error_on() -> None:
    """A folder fsync that fails fails the write that asked (nothing is taken as durable)."""
    class Broken(SlowDirs):
        def fsync_dir(self, path: str) -> None:
            raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        GroupFS(Broken()).fsync_dir("/outbox")  # type: ignore[arg-type]


# -- retention.callbacks: removing settled records the reaper named ---------------------------

def delivered(event_id: str, at: float = T0) -> dict[str, Any]:
    rec = {**begin(fresh(event_id), at), "state": "delivered", "next_attempt_at": None}
    return {**rec, "updated_at": iso_now(at)}


def _counted(root: Path) -> tuple[int, int, list[str]]:
    """What a reader counts (the metrics' way): pruned counts plus the settled records on
    disk that the last step does not name; and the settled files left."""
    layout = Layout(root)
    pruned, _ = read_pruned(layout.callbacks_pruned, owner=False)
    left = sorted(os.listdir(layout.callbacks_done))
    by = {"delivered": pruned["delivered"], "failed": pruned["failed"]}
    for name in left:
        rec = outbox(root).get(name.removesuffix(".json"))
        if rec is not None and rec["id"] not in pruned["step"]:
            by[rec["state"]] += 1
    return by["delivered"], by["failed"], left


def test_prune_removes_only_settled_records_past_the_age(tmp_path: Path) -> None:
    """prune removes the named settled records last changed `older_than` ago, counts them
    by outcome in callbacks/pruned.json, and leaves a recent one, a live one and an id
    it does not have."""
    box = outbox(tmp_path)
    box.scan()
    box.put(delivered("old"))
    box.put(failed("bad"))
    box.put(delivered("new", T0 + 3000))
    box.put(fresh("live"))
    gone = box.prune(["old", "bad", "new", "live", "nosuch"], 1000.0, T0 + 3500)
    assert [("old", "delivered"), ("bad", "failed")] == gone
    assert (["live.json"], ["new.json"]) == names(tmp_path)
    assert (2, 1, ["new.json"]) == _counted(tmp_path)
    pruned, bad = read_pruned(Layout(tmp_path).callbacks_pruned, owner=True)
    assert ({"delivered": 1, "failed": 1, "step": ["old", "bad"]}, None) == (pruned, bad)


def test_a_power_cut_during_a_prune(tmp_path: Path) -> None:
    """A cut anywhere in a prune leaves, after the next start's finish_prune, either
    nothing removed or the two old records gone and counted — never counted twice, never
    lost from the counts."""
    def setup(root: str) -> None:
        box = outbox(Path(root))
        box.scan()
        box.put(delivered("d1"))
        box.put(failed("f1"))
        box.put(delivered("n1", T0 + 3000))

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        outbox(Path(root), fs).prune(["d1", "f1", "n1"], 1000.0, T0 + 3500)
        yield

    def picture(root: str) -> Any:
        outbox(Path(root)).finish_prune()
        return _counted(Path(root))

    report = explore(tmp_path, setup=setup, workload=workload, recover=picture,
                     expected=[(2, 1, ["d1.json", "f1.json", "n1.json"]),
                               (2, 1, ["n1.json"])])
    assert {0, 1} == set(report.recovered_to)


def test_a_corrupt_pruned_record_is_moved_aside(tmp_path: Path) -> None:
    """An unreadable callbacks/pruned.json is quarantined by its owner and its counts
    restart from 0; a reader sees zeros and moves nothing."""
    layout = Layout(tmp_path)
    box = outbox(tmp_path)
    box.scan()
    layout.callbacks_pruned.write_text("{not json")
    assert ({"delivered": 0, "failed": 0, "step": []}, True) == (
        read_pruned(layout.callbacks_pruned, owner=False)[0], layout.callbacks_pruned.exists())
    assert 0 == box.finish_prune()
    assert [False, True] == [layout.callbacks_pruned.exists(), any(
        ".corrupted." in n for n in os.listdir(layout.callbacks_pruned.parent))]
