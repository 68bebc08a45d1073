"""The queued jobs' index (scheduler.runnable): priorities, delays, dependencies, agent room."""

from __future__ import annotations

import time
from typing import Any

from supervisor.scheduler.runnable import Runnable
from supervisor.state.clock import iso_now

NOW = 1_800_000_000.0


def job(job_id: str, agent: str = "shell", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "agent": agent, "state": "queued", **extra}


def states(**known: str) -> Any:
    return known.get


def no_retry(job_id: str) -> str | None:
    return None


def drain(r: Runnable, room: Any = lambda agent: True) -> list[str]:
    out = []
    while (picked := r.pop(room)) is not None:
        out.append(picked[0])
    return out


def test_higher_priority_first_then_submission_order() -> None:
    """Priority wins; within one priority the order of submission (FIFO)."""
    r = Runnable()
    for j in (job("a"), job("b", priority=5), job("c"), job("d", priority=5),
              job("e", priority=-3)):
        assert r.add(j, states(), no_retry, NOW) is None
    assert ["b", "d", "a", "c", "e"] == drain(r)


def test_a_delayed_job_is_ready_when_its_time_comes() -> None:
    """not_before ahead: not ready; due() says when, and moves it once the time came."""
    r = Runnable()
    r.add(job("later", not_before=iso_now(NOW + 60)), states(), no_retry, NOW)
    r.add(job("now"), states(), no_retry, NOW)
    assert (["now"], NOW + 60) == (drain(r), r.due(NOW))
    assert (NOW + 60, []) == (r.due(NOW + 59.9), drain(r))
    assert (None, ["later"]) == (r.due(NOW + 60), drain(r))


def test_after_waits_for_completion_and_a_failure_dooms_the_waiter() -> None:
    """after: ready once every dependency completed; one that ends otherwise dooms it with
    `dependency JOB <state>`; after_any: ready once they are terminal, whatever state."""
    r = Runnable()
    r.add(job("c", after=["a", "b"]), states(a="running", b="queued"), no_retry, NOW)
    r.add(job("d", after_any=["a"]), states(a="running"), no_retry, NOW)
    assert [] == drain(r)
    assert [] == r.ended("a", "completed", None, NOW)
    assert ["d"] == drain(r)
    assert [("c", "dependency b failed")] == r.ended("b", "failed", None, NOW)
    assert ([], 0) == (drain(r), len(r))


def test_a_dependency_that_ended_before_the_waiter_came() -> None:
    """A dependency already completed counts as done; one already failed dooms at once;
    one unknown is a reason too."""
    r = Runnable()
    assert r.add(job("x", after=["a"]), states(a="completed"), no_retry, NOW) is None
    assert "dependency b cancelled" == r.add(job("y", after=["b"]), states(b="cancelled"),
                                             no_retry, NOW)
    assert "dependency z is unknown" == r.add(job("w", after=["z"]), states(), no_retry, NOW)
    assert ["x"] == drain(r)


def test_a_retried_dependency_hands_its_waiters_to_the_retry() -> None:
    """A failed job that is retried is not an end for its waiters: they wait for the retry
    (also when the waiter comes after the retry was made: the chain is followed)."""
    r = Runnable()
    r.add(job("w", after=["a"]), states(a="running"), no_retry, NOW)
    assert [] == r.ended("a", "failed", "a.r1", NOW)
    assert [] == drain(r)
    assert [] == r.ended("a.r1", "completed", None, NOW)
    assert ["w"] == drain(r)
    late = Runnable()
    assert late.add(job("v", after=["a"]), states(a="failed", **{"a.r1": "queued"}),
                    {"a": "a.r1"}.get, NOW) is None
    assert [] == drain(late)


def test_an_agent_at_its_limit_is_passed_over_not_waited_for() -> None:
    """No head-of-line blocking: the best job of a full agent stays queued while another
    agent's job starts; it keeps its place for when its agent has room."""
    r = Runnable()
    r.add(job("c1", "claude", priority=9), states(), no_retry, NOW)
    r.add(job("s1", "shell"), states(), no_retry, NOW)
    assert ["s1"] == drain(r, lambda agent: agent != "claude")
    assert ["c1"] == drain(r)


def test_a_job_put_back_keeps_its_place() -> None:
    """restore() puts a popped job back where it was in line."""
    r = Runnable()
    for j in (job("a"), job("b")):
        r.add(j, states(), no_retry, NOW)
    picked = r.pop(lambda agent: True)
    assert picked is not None
    r.restore(*picked)
    assert ["a", "b"] == drain(r)


def test_a_long_chain_costs_one_step_per_end() -> None:
    """10,000 jobs in a chain: each end touches only its own waiter (the index never scans
    the chain); the whole chain runs in order."""
    r = Runnable()
    n = 10_000
    r.add(job("j0"), states(), no_retry, NOW)
    known = {"j0": "queued"}
    for i in range(1, n):
        r.add(job(f"j{i}", after=[f"j{i - 1}"]), known.get, no_retry, NOW)
        known[f"j{i}"] = "queued"
    order = []
    t0 = time.perf_counter()
    while (picked := r.pop(lambda agent: True)) is not None:
        order.append(picked[0])
        r.ended(picked[0], "completed", None, NOW)
    elapsed = time.perf_counter() - t0
    assert [f"j{i}" for i in range(n)] == order
    assert elapsed < 5.0, "the chain is not indexed (a scan per end?)"


def test_why_a_job_is_not_ready() -> None:
    """why(): its dependencies, or its not_before; None once it is ready."""
    r = Runnable()
    r.add(job("x", after=["a"]), states(a="running"), no_retry, NOW)
    r.add(job("y", not_before=iso_now(NOW + 5)), states(), no_retry, NOW)
    r.add(job("z"), states(), no_retry, NOW)
    assert ["after a", "not_before", None] == [r.why(j, NOW) for j in ("x", "y", "z")]
