"""Tests of supervisor/_queue.py: queue semantics over the in-memory twin, and
persistence (FIFO, idempotence, counters, snapshots, corruption) over the real WAL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.state.queue import (
    COUNTERS,
    JOB_STATES,
    SUBLOG_COUNTER,
    TERMINAL_STATES,
    JobQueue,
    MemoryStorage,
    ReadOnly,
    usage_counter,
    usage_counter_parts,
)
from supervisor.state.wal import FRAME, MORE, REC_MAGIC, SEG_HEADER, Wal, segment_name


def mem(**kw: Any) -> tuple[JobQueue, MemoryStorage]:
    storage = MemoryStorage(**kw)
    return JobQueue.over(storage), storage


def reopen(storage: MemoryStorage) -> JobQueue:
    return JobQueue.over(storage)


def test_states_and_counters_constants() -> None:
    """The nine states, the five terminal ones and the seven counters are as specified."""
    assert ("queued", "waiting", "starting", "running", "completed", "failed", "cancelled",
            "timed_out", "lost") == JOB_STATES
    assert {"completed", "failed", "cancelled", "timed_out", "lost"} == TERMINAL_STATES
    assert ("submitted", "completed", "failed", "cancelled", "timed_out", "lost",
            "recovered") == COUNTERS


def test_enqueue_sets_default_fields_and_get_merges() -> None:
    """enqueue gives state queued, attempts 0; get returns body + fields + id."""
    q, _ = mem()
    assert q.enqueue("j1", {"agent": "shell", "prompt": "echo hi"})
    assert {"agent": "shell", "prompt": "echo hi", "state": "queued", "attempts": 0,
            "id": "j1"} == q.get("j1")
    assert q.get("nope") is None
    assert q.state("nope") is None


def test_body_may_set_state_and_attempts() -> None:
    """A body carrying state/attempts overrides the defaults."""
    q, _ = mem()
    q.enqueue("j1", {"state": "waiting", "attempts": 2})
    job = q.get("j1")
    assert job is not None
    assert ("waiting", 2) == (job["state"], job["attempts"])


def test_duplicate_enqueue_returns_false_and_changes_nothing() -> None:
    """A second enqueue of an id is refused and leaves the first body and state alone."""
    q, storage = mem()
    q.enqueue("j1", {"v": 1})
    q.update("j1", state="running", pid=42)
    writes = storage.writes
    assert q.enqueue("j1", {"v": 2}) is False
    assert writes == storage.writes
    assert {"v": 1, "state": "running", "attempts": 0, "pid": 42, "id": "j1"} == q.get("j1")


def test_enqueue_many_one_write_one_sync_duplicates_flagged() -> None:
    """enqueue_many is one write and one sync; duplicates (also within it) get False."""
    q, storage = mem()
    q.enqueue("a", {})
    w, s = storage.writes, storage.syncs
    assert [False, True, True, False] == q.enqueue_many(
        [("a", {}), ("b", {}), ("c", {}), ("b", {"x": 1})])
    assert (w + 1, s + 1) == (storage.writes, storage.syncs)
    assert ["a", "b", "c"] == q.ids()
    assert "x" not in (q.get("b") or {})


def test_enqueue_many_advances_other_counters_in_the_same_write() -> None:
    """counters= go in the enqueue's one write (the api log's bookmark beside its jobs),
    even when no job is new; the bookmark is read with counter() and stays out of stats."""
    q, storage = mem()
    w = storage.writes
    q.enqueue_many([("a", {}), ("b", {})], count="submitted", counters={SUBLOG_COUNTER: 3})
    assert (w + 1, 2, 3) == (storage.writes, q.stats()["submitted"], q.counter(SUBLOG_COUNTER))
    q.enqueue_many([("a", {})], count="submitted", counters={SUBLOG_COUNTER: 2})
    assert (w + 2, 2, 5) == (storage.writes, q.stats()["submitted"], q.counter(SUBLOG_COUNTER))
    assert SUBLOG_COUNTER not in q.stats()
    assert 0 == q.counter("completed")


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "é", "x" * 65, 7, None])
def test_bad_ids_refused(bad: Any) -> None:
    """Ids outside [A-Za-z0-9][A-Za-z0-9._-]{0,63} are refused; nothing is stored."""
    q, storage = mem()
    with pytest.raises(ValueError):
        q.enqueue(bad, {})
    assert ([], 0) == (q.ids(), storage.writes)


def test_bad_bodies_and_fields_refused() -> None:
    """Bodies that are not JSON dicts, unknown states and id changes are refused."""
    q, storage = mem()
    with pytest.raises(ValueError):
        q.enqueue("a", {"f": object()})
    with pytest.raises(ValueError):
        q.enqueue("a", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        q.enqueue("a", {"state": "bogus"})
    q.enqueue("b", {})
    with pytest.raises(ValueError):
        q.update("b", state="done")
    with pytest.raises(ValueError):
        q.update("b", id="c")
    with pytest.raises(KeyError):
        q.update("zzz", state="running")
    assert 1 == storage.writes
    assert "queued" == q.state("b")


def test_update_many_checks_all_before_writing_any() -> None:
    """One unknown id in update_many: nothing is written, nothing changes."""
    q, storage = mem()
    q.enqueue_many([("a", {}), ("b", {})])
    writes = storage.writes
    with pytest.raises(KeyError):
        q.update_many([("a", {"state": "running"}), ("ghost", {"state": "running"})])
    assert writes == storage.writes
    assert "queued" == q.state("a")


def test_update_changes_state_and_fields() -> None:
    """update sets state and any field; later updates override earlier ones."""
    q, _ = mem()
    q.enqueue("a", {"agent": "shell"})
    q.update("a", state="running", pid=10, start=99)
    q.update("a", state="completed", exit_code=0, pid=None)
    assert {"agent": "shell", "state": "completed", "attempts": 0, "pid": None, "start": 99,
            "exit_code": 0, "id": "a"} == q.get("a")


def test_ids_fifo_by_state_and_first_queued() -> None:
    """ids keeps submission order (per state too); first_queued is the oldest queued."""
    q, _ = mem()
    q.enqueue_many([(f"j{i}", {}) for i in range(5)])
    assert "j0" == q.first_queued()
    q.update("j0", state="running")
    q.update("j2", state="waiting")
    assert "j1" == q.first_queued()
    assert ["j1", "j3", "j4"] == q.ids("queued")
    assert ["j0", "j1", "j2", "j3", "j4"] == q.ids()
    q.update_many([("j1", {"state": "running"}), ("j3", {"state": "running"})])
    assert "j4" == q.first_queued()
    q.update("j0", state="queued")            # put back: it is the oldest again
    assert "j0" == q.first_queued()
    assert ["j0", "j4"] == q.ids("queued")
    with pytest.raises(ValueError):
        q.ids("bogus")


def test_first_queued_none_when_nothing_queued() -> None:
    """No queued job: first_queued is None."""
    q, _ = mem()
    assert q.first_queued() is None
    q.enqueue("a", {"state": "waiting"})
    assert q.first_queued() is None


def test_counts_cover_all_states() -> None:
    """counts() has every state, zeros included."""
    q, _ = mem()
    q.enqueue_many([("a", {}), ("b", {}), ("c", {})])
    q.update("c", state="lost")
    expect = dict.fromkeys(JOB_STATES, 0)
    expect.update(queued=2, lost=1)
    assert expect == q.counts()


def test_holds_says_whether_any_job_is_in_a_state() -> None:
    """holds(state) is true exactly while some job is in that state."""
    q, _ = mem()
    q.enqueue_many([("a", {}), ("b", {})])
    assert (True, False) == (q.holds("queued"), q.holds("waiting"))
    q.update("b", state="waiting")
    assert (True, True) == (q.holds("queued"), q.holds("waiting"))
    q.update("b", state="completed")
    assert (True, False, True) == (q.holds("queued"), q.holds("waiting"), q.holds("completed"))


def test_counters_incr_and_persist() -> None:
    """incr adds to a counter; unknown counters and negative steps are refused."""
    q, storage = mem()
    q.incr("submitted", 3)
    q.incr("completed")
    with pytest.raises(ValueError):
        q.incr("bogus")
    with pytest.raises(ValueError):
        q.incr("lost", -1)
    expect = dict.fromkeys(COUNTERS, 0)
    expect.update(submitted=3, completed=1)
    assert expect == q.stats()
    assert expect == reopen(storage).stats()


def test_usage_counters_go_with_the_terminal_state_and_survive_snapshots() -> None:
    """Per-agent usage counters are counters like the others: written in the same atomic
    group as an update, listed after the fixed ones, kept by snapshots and reopens; a name
    that is neither is refused."""
    q, storage = mem(compact_records=3)
    q.enqueue("a", {})
    q.update_many([("a", {"state": "completed"})],
                  counters={"completed": 1, usage_counter("claude", "input_tokens"): 11,
                            usage_counter("claude", "cost_micro_usd"): 184})
    for i in range(5):
        q.enqueue(f"x{i}", {})
    assert storage.snapshots >= 1
    expect = dict.fromkeys(COUNTERS, 0)
    expect.update({"completed": 1, "usage/claude/input_tokens": 11,
                   "usage/claude/cost_micro_usd": 184})
    assert expect == q.stats() == reopen(storage).stats()
    assert list(COUNTERS) == list(q.stats())[:len(COUNTERS)]
    assert ("claude", "input_tokens") == usage_counter_parts("usage/claude/input_tokens")
    assert None is usage_counter_parts("completed")
    for bad in ("usage/claude/bogus", "usage/../x/turns", "usage/claude"):
        with pytest.raises(ValueError):
            q.incr(bad)
    with pytest.raises(ValueError):
        usage_counter("claude", "dollars")


def test_memory_reopen_replays_snapshot_and_tail() -> None:
    """The twin replays its snapshot + records like a disk recovery does."""
    q, storage = mem(compact_records=5)
    for i in range(23):
        q.enqueue(f"j{i}", {"n": i})
    q.update("j3", state="completed", exit_code=0)
    q.update("j21", reason="tail")
    q.incr("submitted", 23)
    assert storage.snapshots >= 3
    assert len(storage.records) < 5
    before = {j: q.get(j) for j in q.ids()}
    again = reopen(storage)
    assert before == {j: again.get(j) for j in again.ids()}
    assert q.ids() == again.ids()
    assert 23 == again.stats()["submitted"]


def test_readonly_queue_refuses_writes() -> None:
    """A read-only queue reads everything and refuses every write."""
    q, storage = mem()
    q.enqueue("a", {})
    ro = JobQueue.over(storage.reader())
    assert ["a"] == ro.ids()
    with pytest.raises(ReadOnly):
        ro.enqueue("b", {})
    with pytest.raises(ReadOnly):
        ro.update("a", state="running")
    with pytest.raises(ReadOnly):
        ro.incr("submitted")


# -- a model-based check: any sequence of operations, reopened at any time ----------------------
OPS = st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.integers(0, 15), st.integers(0, 3)),
    st.tuples(st.just("update"), st.integers(0, 15), st.sampled_from(JOB_STATES)),
    st.tuples(st.just("field"), st.integers(0, 15), st.integers(0, 100)),
    st.tuples(st.just("batch"), st.integers(0, 15), st.integers(1, 4)),
    st.tuples(st.just("incr"), st.sampled_from(COUNTERS), st.integers(0, 3)),
    st.tuples(st.just("forget"), st.integers(0, 15), st.integers(1, 3)),
    st.tuples(st.just("reopen"), st.integers(0, 0), st.integers(0, 0)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, threshold=st.integers(1, 8))
def test_queue_matches_a_plain_model(ops: list[tuple[str, Any, Any]], threshold: int) -> None:
    """Against a dict model, through compactions, forgets and reopens: same jobs, order,
    counters; a forgotten id is free again (a new job under it goes to the end)."""
    q, storage = mem(compact_records=threshold)
    order: list[str] = []
    jobs: dict[str, dict[str, Any]] = {}
    stats = dict.fromkeys(COUNTERS, 0)
    for op, a, b in ops:
        if op == "enqueue":
            jid = f"j{a}"
            assert (jid not in jobs) == q.enqueue(jid, {"b": b})
            if jid not in jobs:
                order.append(jid)
                jobs[jid] = {"b": b, "state": "queued", "attempts": 0, "id": jid}
        elif op == "batch":
            new = [f"j{x}" for x in range(a, a + b)]
            q.enqueue_many([(j, {"b": 0}) for j in new])
            for j in new:
                if j not in jobs:
                    order.append(j)
                    jobs[j] = {"b": 0, "state": "queued", "attempts": 0, "id": j}
        elif op in ("update", "field") and f"j{a}" in jobs:
            change = {"state": b} if op == "update" else {"f": b}
            q.update(f"j{a}", **change)
            jobs[f"j{a}"].update(change)
        elif op == "incr":
            q.incr(a, b)
            stats[a] += b
        elif op == "forget":
            asked = [f"j{x}" for x in range(a, a + b)]
            done = [j for j in asked if j in jobs and jobs[j]["state"] in TERMINAL_STATES]
            assert done == q.forget(asked)
            for j in done:
                order.remove(j)
                del jobs[j]
        elif op == "reopen":
            q = reopen(storage)
        assert order == q.ids()
    q = reopen(storage)
    assert order == q.ids()
    assert jobs == {j: q.get(j) for j in order}
    assert (stats, len(order)) == (q.stats(), len(q))
    queued = [j for j in order if jobs[j]["state"] == "queued"]
    assert (queued[0] if queued else None) == q.first_queued()


# -- on the real disk ---------------------------------------------------------------------------
def test_fifo_and_idempotence_across_reopen_on_disk(tmp_path: Path) -> None:
    """Order and duplicate refusal hold across reopens and compactions on disk."""
    q = JobQueue.over(Wal.open(tmp_path, compact_records=7))
    for i in range(40):
        q.enqueue(f"j{i:02d}", {"n": i})
        if i % 9 == 0:
            q.update(f"j{i:02d}", state="running")
    q.incr("submitted", 40)
    q.close()
    q = JobQueue.open(tmp_path)
    assert [f"j{i:02d}" for i in range(40)] == q.ids()
    assert q.enqueue("j05", {"n": "again"}) is False
    assert {"n": 5, "state": "queued", "attempts": 0, "id": "j05"} == q.get("j05")
    assert "j01" == q.first_queued()
    assert 40 == q.stats()["submitted"]
    assert [] == q.recovery.errors
    q.close()


@pytest.mark.parametrize("touched", [5, 400])
def test_tail_updates_of_snapshot_jobs(tmp_path: Path, touched: int) -> None:
    """Updates replayed onto snapshot jobs land right (a few by search, many by index)."""
    q = JobQueue.over(Wal.open(tmp_path, compact_records=500))
    q.enqueue_many([(f"j{i}", {"n": i}) for i in range(500)])   # compacts: all in snapshot
    q.update_many([(f"j{i}", {"state": "waiting", "k": i}) for i in range(0, touched)])
    q.close()
    q = JobQueue.open(tmp_path)
    assert q.recovery.snapshot_loaded
    assert touched == q.counts()["waiting"]
    assert {"n": 3, "k": 3, "state": "waiting", "attempts": 0, "id": "j3"} == q.get("j3")
    assert f"j{touched}" == q.first_queued()
    q.close()


def _frames(data: bytes) -> list[tuple[int, int, bytes, bool]]:
    """Each record of a segment image: (start, end, payload, MORE flag)."""
    out, pos = [], SEG_HEADER.size
    while data[pos:pos + 4] == REC_MAGIC:
        length = FRAME.unpack_from(data, pos)[1]
        end = pos + FRAME.size + (length & ~MORE)
        out.append((pos, end, data[pos + FRAME.size:end], bool(length & MORE)))
        pos = end
    return out


def _picture(q: JobQueue) -> dict[str, Any]:
    """What a reader of the queue observes: jobs in FIFO order, first queued, counts."""
    return {"jobs": [q.get(i) for i in q.ids()], "first_queued": q.first_queued(),
            "counts": q.counts(), "stats": q.stats()}


def _flip(path: Path, record: int) -> None:
    """Flip one payload byte of the record-th record of a segment."""
    data = bytearray(path.read_bytes())
    start, end, _, _ = _frames(bytes(data))[record]
    data[(start + FRAME.size + end) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_segment_via_queue_loses_only_the_damaged_job(tmp_path: Path) -> None:
    """The queue snapshots every job that survived a damaged record (before and after
    it), then the segment is moved aside; the next open is clean."""
    q = JobQueue.open(tmp_path)
    for i in range(4):
        q.enqueue(f"j{i}", {"n": i})
    q.close()
    _flip(tmp_path / segment_name(1), 1)                # j1's enqueue
    q = JobQueue.open(tmp_path)
    assert ["j0", "j2", "j3"] == q.ids()
    assert "corrupt" in q.recovery.errors[0]
    assert any(".corrupted." in p for p in q.recovery.quarantined)
    q.close()
    q = JobQueue.open(tmp_path)
    assert (["j0", "j2", "j3"], [], 0) == (q.ids(), q.recovery.errors,
                                           q.recovery.orphan_updates)
    q.close()


def test_running_job_after_a_lost_enqueue_stays_tracked(tmp_path: Path) -> None:
    """A running job recorded after the damage keeps its state and pid; the update of
    the job whose enqueue was lost is an orphan: skipped, counted, reported."""
    q = JobQueue.open(tmp_path)
    for i in range(4):
        q.enqueue(f"j{i}", {"n": i})
    q.update("j1", state="running", pid=11, start=1)
    q.update("j2", state="running", pid=4242, start=7)
    q.close()
    _flip(tmp_path / segment_name(1), 1)                # j1's enqueue
    q = JobQueue.open(tmp_path)
    picture = _picture(q)
    assert ["j0", "j2", "j3"] == q.ids()
    assert {"n": 2, "state": "running", "attempts": 0, "pid": 4242, "start": 7,
            "id": "j2"} == q.get("j2")
    assert ("j0", ["j2"]) == (q.first_queued(), q.ids("running"))
    assert 1 == q.recovery.orphan_updates
    assert any(e.startswith("orphan updates: 1") and "j1" in e for e in q.recovery.errors)
    q.close()
    q = JobQueue.open(tmp_path)
    assert (picture, [], 0) == (_picture(q), q.recovery.errors, q.recovery.orphan_updates)
    q.close()


def test_orphan_updates_in_the_twin_are_counted_not_fatal() -> None:
    """Replayed updates of a job that was never enqueued are skipped and counted; the
    other jobs keep their order and fields."""
    q, storage = mem()
    q.enqueue_many([("a", {}), ("b", {})])
    q.update("a", state="running")
    q.update("a", reason="x")
    q.update("b", state="waiting")
    del storage.records[0]                      # a's enqueue
    again = reopen(storage)
    assert (["b"], "waiting", 2) == (again.ids(), again.state("b"),
                                     again.recovery.orphan_updates)
    assert ["orphan updates: 2 (updates of jobs whose enqueue was lost) skipped, for "
            "job(s) a"] == again.recovery.errors


QUEUE_OPS: list[Any] = [
    lambda q: q.enqueue_many([("a", {"n": 1}), ("b", {"n": 2})]),
    lambda q: q.enqueue("c", {"n": 3}),
    lambda q: q.update("a", state="running", pid=11, start=22),
    lambda q: q.update_many([("b", {"state": "running"}), ("c", {"reason": "r"})]),
    lambda q: q.enqueue("d", {"n": 4}),
    lambda q: q.incr("submitted", 4),
    lambda q: q.update("d", state="waiting"),
    lambda q: q.enqueue("e", {"n": 5}),
]
N_QUEUE_RECORDS = 10


@pytest.mark.parametrize("k", range(N_QUEUE_RECORDS - 1))
def test_one_damaged_record_costs_only_its_group(tmp_path: Path, k: int) -> None:
    """For each record k (the last one would be a torn tail): the recovered queue is
    exactly the twin replaying every group but k's (orphan updates included), loudly;
    then a second recovery shows the same with no error."""
    q = JobQueue.open(tmp_path)
    for op in QUEUE_OPS:
        op(q)
    q.close()
    path = tmp_path / segment_name(1)
    frames = _frames(path.read_bytes())
    assert N_QUEUE_RECORDS == len(frames)
    group_of, g = [], 0
    for _, _, _, more in frames:
        group_of.append(g)
        g += 0 if more else 1
    twin = MemoryStorage()
    twin.records = [p for i, (_, _, p, _) in enumerate(frames) if group_of[i] != group_of[k]]
    expected = JobQueue.over(twin)
    _flip(path, k)
    q = JobQueue.open(tmp_path)
    assert _picture(expected) == _picture(q)
    assert expected.recovery.orphan_updates == q.recovery.orphan_updates
    assert 1 == q.recovery.groups_dropped
    assert [(segment_name(1), frames[k][0], frames[k][1])] == q.recovery.skipped
    assert "corrupt" in q.recovery.errors[0]
    q.close()
    q = JobQueue.open(tmp_path)
    assert (_picture(expected), [], []) == (_picture(q), q.recovery.errors,
                                            q.recovery.quarantined)
    q.close()


def test_damaged_batch_enqueue_leaves_orphans(tmp_path: Path) -> None:
    """The case the per-record test relies on: losing enqueue_many's group orphans the
    later updates of both its jobs."""
    q = JobQueue.open(tmp_path)
    for op in QUEUE_OPS:
        op(q)
    q.close()
    _flip(tmp_path / segment_name(1), 1)                 # "b", second of the batch
    q = JobQueue.open(tmp_path)
    assert (["c", "d", "e"], 2, 1) == (q.ids(), q.recovery.orphan_updates,
                                       q.recovery.records_dropped)
    assert {"n": 3, "reason": "r", "state": "queued", "attempts": 0, "id": "c"} == q.get("c")
    q.close()


def test_readonly_disk_queue_sees_the_writer(tmp_path: Path) -> None:
    """A read-only open beside the writer sees what the writer acknowledged."""
    w = JobQueue.open(tmp_path)
    w.enqueue_many([("a", {}), ("b", {})])
    w.update("a", state="running")
    ro = JobQueue.open(tmp_path, readonly=True)
    assert (["a", "b"], "b") == (ro.ids(), ro.first_queued())
    with pytest.raises(ReadOnly):
        ro.enqueue("c", {})
    w.close()


def test_raw_finds_bodies_by_bytes_in_the_snapshot_and_after_it(tmp_path: Path) -> None:
    """raw(state, needles): the bodies containing every needle, in submission order, found
    in the compacted snapshot and among jobs added since; a needle spanning two bodies
    matches neither."""
    q = JobQueue.over(Wal.open(str(tmp_path / "wal"), compact_records=50))
    for i in range(120):                    # enough records for a snapshot
        q.enqueue(f"j{i:03d}", {"agent": "shell", "labels": {"team": "infra" if i % 40 == 0
                                                             else "web"}})
    q.enqueue("late", {"agent": "claude", "labels": {"team": "infra"}})
    q.update("j040", state="running")
    got = [i for i, _ in q.raw(None, [b'"team":"infra"'])]
    assert ["j000", "j040", "j080", "late"] == got
    assert ["j040"] == [i for i, _ in q.raw("running", [b'"team":"infra"'])]
    assert ["late"] == [i for i, _ in q.raw(None, [b'"team":"infra"', b'"agent":"claude"'])]
    assert [] == q.raw(None, [b'"}}\n{"agent'])
    q.close()


def test_forget_drops_finished_jobs_keeps_counters_and_frees_the_ids(tmp_path: Path) -> None:
    """forget: only terminal jobs go; they are gone from every view at once and from the
    snapshot after the next compaction (the state shrinks), and after a reopen; counters
    stay; a forgotten id can be used again by a new job."""
    q = JobQueue.over(Wal.open(tmp_path, compact_records=50))
    q.enqueue_many([(f"j{i:03d}", {"pad": "x" * 2000}) for i in range(300)], count="submitted")
    q.update_many([(f"j{i:03d}", {"state": "completed"}) for i in range(290)])
    assert ["j000", "j001"] == q.forget(["j000", "j001", "j295", "nope"])
    assert (None, None, 298) == (q.get("j000"), q.state("j001"), len(q))
    size_before = sum(f.stat().st_size for f in tmp_path.iterdir())
    for start in range(2, 290, 20):
        q.forget([f"j{i:03d}" for i in range(start, min(start + 20, 290))])
    for _ in range(50):                  # enough records for one more compaction
        q.incr("submitted", 0)
    q.close()
    q = JobQueue.open(tmp_path)
    assert ([f"j{i:03d}" for i in range(290, 300)], 300, []) == (
        q.ids(), q.stats()["submitted"], q.recovery.errors)
    assert True is q.enqueue("j000", {"again": True})
    assert (["j000"], {"again": True, "state": "queued", "attempts": 0, "id": "j000"}) == (
        q.ids()[-1:], q.get("j000"))
    size_after = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert size_after < size_before / 4
    q.close()


@pytest.mark.parametrize("indexed", [False, True])
def test_forget_a_job_of_the_snapshot_then_reuse_its_id(tmp_path: Path, indexed: bool) -> None:
    """A snapshot job forgotten in the log's tail stays forgotten across a reopen, whether
    lookups go through the id index or a byte search; its id enqueued again is a new job,
    not a hidden duplicate."""
    q = JobQueue.over(Wal.open(tmp_path, compact_records=4))
    q.enqueue_many([(f"s{i}", {}) for i in range(6)])
    q.update("s1", state="failed")           # compaction: s0..s5 now in the snapshot
    q.close()
    q = JobQueue.open(tmp_path)
    if indexed:
        q.ids()
        q.get("s5")
    assert ["s1"] == q.forget(["s1"])
    assert True is q.enqueue("s1", {"n": 2})
    q.close()
    q = JobQueue.open(tmp_path)
    if indexed:
        assert ["s0", "s2", "s3", "s4", "s5", "s1"] == q.ids()
    assert ({"n": 2, "state": "queued", "attempts": 0, "id": "s1"}, []) == (
        q.get("s1"), q.recovery.errors)
    assert ["s0", "s2", "s3", "s4", "s5", "s1"] == q.ids()
    q.close()


def test_field_values_reads_one_field_of_many_jobs_as_get_would(tmp_path: Path) -> None:
    """field_values(key, states): {id: the field's current value} of the jobs in `states`
    that have it — from the snapshot, from deltas replayed from the log's tail and not
    merged yet, and from jobs added since — exactly what get() says; never a body key,
    never a forgotten job."""
    q = JobQueue.over(Wal.open(tmp_path, compact_records=40))
    q.enqueue_many([(f"j{i:02d}", {"finished_at": "in the body"}) for i in range(30)])
    q.update_many([(f"j{i:02d}", {"state": "completed", "finished_at": f"t{i}"})
                   for i in range(20)])                     # compaction: all in the snapshot
    q.update_many([(f"j{i:02d}", {"finished_at": f"u{i}"}) for i in range(5)])
    q.update("j25", state="failed", exit_code=1)            # no finished_at field
    q.forget(["j19"])
    q.close()
    q = JobQueue.open(tmp_path, readonly=True)              # the tail's deltas: unmerged
    want = {f"j{i:02d}": (f"u{i}" if i < 5 else f"t{i}") for i in range(19)}
    got = q.field_values("finished_at", ["completed", "failed"])
    assert want == got
    assert {j: (q.get(j) or {})["finished_at"] for j in want} == got
    assert {"j25": 1} == q.field_values("exit_code", ["failed"])
    assert 29 == len(q.field_values("attempts"))
    assert {} == q.field_values("finished_at", ["queued"])
    q.close()
