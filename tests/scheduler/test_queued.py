"""The scheduler's queued jobs (scheduler.queued): rebuilding the index, retries, the pause."""

from __future__ import annotations

from pathlib import Path

from supervisor.scheduler.queued import Paused, agent_load, index, retry_id, retry_job
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.layout import Layout
from supervisor.state.queue import JobQueue, MemoryStorage

NOW = 1_800_000_000.0


def test_the_index_is_rebuilt_from_the_queue_in_order_with_the_doomed_named() -> None:
    """At start every queued job is indexed again (priority, then submission order; a job
    waiting for a running one stays blocked), and one whose dependency already failed is
    named with its reason."""
    q = JobQueue.over(MemoryStorage())
    q.enqueue("run", {"agent": "shell"})
    q.update("run", state="running")
    q.enqueue("bad", {"agent": "shell"})
    q.update("bad", state="failed")
    q.enqueue("a", {"agent": "shell"})
    q.enqueue("b", {"agent": "shell", "priority": 3})
    q.enqueue("w", {"agent": "shell", "after": ["run"]})
    q.enqueue("d", {"agent": "shell", "after": ["bad"]})
    runnable, doomed = index(q, NOW)
    order = []
    while (picked := runnable.pop(lambda agent: True)) is not None:
        order.append(picked[0])
    assert (["b", "a"], [("d", "dependency bad failed")], "after run") == (
        order, doomed, runnable.why("w", NOW))


def test_a_retried_dependency_is_followed_when_the_index_is_rebuilt() -> None:
    """A waiter of a failed job that was retried waits for the retry (retried_as)."""
    q = JobQueue.over(MemoryStorage())
    q.enqueue("x", {"agent": "shell"})
    q.update("x", state="failed", retried_as="x.r1")
    q.enqueue("x.r1", {"agent": "shell", "retry_of": "x"})
    q.enqueue("w", {"agent": "shell", "after": ["x"]})
    runnable, doomed = index(q, NOW)
    assert ([], "after x.r1") == (doomed, runnable.why("w", NOW))


def test_agent_load_counts_waiting_starting_and_running_jobs() -> None:
    """What max_concurrent counts: jobs waiting for locks, starting or running."""
    q = JobQueue.over(MemoryStorage())
    for job_id, agent, state in (("a", "claude", "running"), ("b", "claude", "waiting"),
                                 ("c", "shell", "starting"), ("d", "claude", "queued"),
                                 ("e", "claude", "completed")):
        q.enqueue(job_id, {"agent": agent})
        q.update(job_id, state=state)
    assert {"claude": 2, "shell": 1} == dict(agent_load(q))


def test_retry_ids_are_deterministic_short_and_step_aside() -> None:
    """<root>.r<n>, the same on every call (a crash replay finds its retry); cut with a
    digest to 64 characters; qualified when the plain id is someone else's."""
    job = {"id": "x"}
    assert ("x.r1", "x.r1") == (retry_id(job, 1), retry_id(job, 1))
    assert "x.r2" == retry_id({"id": "x.r1", "retry_root": "x"}, 2)
    long_id = "L" * 64
    cut = retry_id({"id": long_id}, 3)
    assert (64, True, cut) == (len(cut), cut.endswith(".r3"), retry_id({"id": long_id}, 3))
    other = retry_id(job, 1, taken=["x.r1"])
    assert (True, other) == (other.startswith("x.r1-"), retry_id(job, 1, taken=["x.r1"]))


def test_a_retry_job_has_the_spec_one_retry_less_and_the_schedules_delay() -> None:
    """The retry copies the spec, names what it retries, has one retry less and waits the
    retry schedule's n-th delay (its last one beyond)."""
    entry = {"id": "x", "agent": "shell", "prompt": "p", "labels": {"k": "v"}, "retries": 3,
             "state": "failed", "attempts": 1, "pid": 9}
    first = retry_job(entry, "x.r1", finished=NOW, schedule=(10.0, 60.0), workspace="/ws/x.r1")
    assert ({"id": "x.r1", "agent": "shell", "prompt": "p", "labels": {"k": "v"},
             "retries": 2, "retry_of": "x", "retry_root": "x", "retry_n": 1,
             "workspace": "/ws/x.r1", "created_at": iso_now(NOW),
             "not_before": iso_now(NOW + 10)}) == first
    third = retry_job({**first, "id": "x.r2", "retry_n": 2}, "x.r3", finished=NOW,
                      schedule=(10.0, 60.0), workspace="/w")
    assert NOW + 60 == parse_iso(third["not_before"])


def test_the_pause_flag_survives_in_its_file_and_a_corrupt_one_reads_paused(
        tmp_path: Path) -> None:
    """Missing: not paused. Written: read back. Corrupt: read as paused (starting jobs
    nobody meant to start is the worse mistake), by any reader."""
    layout = Layout(tmp_path)
    layout.paused_file.parent.mkdir(parents=True)
    assert Paused(False, None) == Paused.read(layout, owner=True)
    Paused(True, "2027-01-15T08:00:00.000Z").write(layout)
    assert Paused(True, "2027-01-15T08:00:00.000Z") == Paused.read(layout, owner=False)
    layout.paused_file.write_text("{broken")
    assert True is Paused.read(layout, owner=False).paused
    assert b"{broken" == layout.paused_file.read_bytes()


def test_a_corrupt_pause_file_is_replaced_by_a_visible_pause(tmp_path: Path) -> None:
    """Found by the chaos suite: the scheduler quarantined a corrupt paused.json and kept
    its queue paused in memory, while every reader, the file now missing, said it ran: jobs
    stayed queued with no word why. Now its owner writes the pause in the file's place, so
    `status` shows it and `resume` ends it."""
    layout = Layout(tmp_path)
    layout.paused_file.parent.mkdir(parents=True)
    layout.paused_file.write_text("{broken")
    got = Paused.read(layout, owner=True)
    assert (True, got) == (got.paused, Paused.read(layout, owner=False))
    assert 1 == len([p for p in layout.paused_file.parent.iterdir()
                     if p.name.startswith("paused.json.corrupted.")])
