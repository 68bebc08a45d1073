"""The submit writer: concurrent submissions decided together, their requests written with
several in flight, each answered with its own ids or its own refusal once durable."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from supervisor.api import submit as submit_mod
from supervisor.api.submit import Batcher
from supervisor.config import Config
from supervisor.state.layout import REQUEST, Layout, read_record
from supervisor.state.submission import Checker, JobError, Refused, Taken, write_taken
from tests.helpers import until


def _job(prompt: str, job_id: str | None = None, **extra: Any) -> dict[str, Any]:
    job = Checker(None).check({"agent": "shell", "prompt": prompt, **extra})
    job["id"] = job_id
    return job


def _setup(tmp_path: Path) -> tuple[Config, Layout]:
    layout = Layout(tmp_path / "state")
    return Config(state_dir=layout.root, workspace_dir=tmp_path / "ws"), layout


class Gate:
    """A write that waits for `open()`; `calls` holds how many jobs each write carried."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.event = threading.Event()

    def write(self, layout: Layout, taken: Taken) -> list[list[str] | Exception]:
        self.calls.append(len(taken.jobs))
        assert self.event.wait(10), "the gate was never opened"
        return write_taken(layout, taken)


def _inbox_ids(layout: Layout) -> list[str]:
    """Every job id of every request in the scheduler's inbox (a job twice: twice)."""
    inbox = layout.inbox("scheduler")
    return sorted(j["id"] for name in inbox.iterdir() if name.suffix == ".json"
                  for j in read_record(REQUEST, name, owner=False)["jobs"])


def _lock_free(layout: Layout) -> bool:
    """Whether the submit lock can be taken now (a probe on its own open file, which a
    flock held by the Batcher's own descriptor refuses even in this process)."""
    fd = os.open(layout.submit_lock, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_waiting_submissions_are_decided_together_and_answered_each(tmp_path: Path) -> None:
    """Submissions that wait while a write is in flight are decided together into the next
    request, and each Future gets its own answer: ids, or its own refusal (here a
    dependency that does not exist)."""
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, write=gate.write)
    first = b.submit([_job("p0", "a0")])
    until("the first write begun", lambda: gate.calls == [1])
    rest = [b.submit([_job("p1", "a1")]), b.submit([_job("bad", after=["nope"])]),
            b.submit([_job("p3", "a3"), _job("p4", "a4")])]
    until("the second write begun", lambda: gate.calls == [1, 3])
    gate.event.set()
    assert ["a0"] == first.result(5)
    assert ["a1"] == rest[0].result(5)
    assert isinstance(rest[1].exception(5), JobError)
    assert ["a3", "a4"] == rest[2].result(5)
    assert ["a0", "a1", "a3", "a4"] == _inbox_ids(layout)
    b.close()


def test_writes_overlap_and_none_is_answered_before_its_own_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two writers, a second request goes to the disk while the first is still in
    flight (their fsyncs overlap) once OVERLAP_MIN submissions wait (one alone waits for a
    writer: a file per POST costs more than it saves); with both writers busy, what comes
    waits and goes out as one request when a writer is free. No submission is answered
    before its own write returned."""
    assert 2 == submit_mod.OVERLAP_MIN
    monkeypatch.setattr(submit_mod, "SESSION", 60.0)    # no turn for others meanwhile
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, writers=2, write=gate.write)
    first = b.submit([_job("p0", "b0")])
    until("the first write begun", lambda: len(gate.calls) == 1)
    second = [b.submit([_job("p1", "b1")])]
    time.sleep(0.2)
    assert [1] == gate.calls                        # one alone waits for the writer
    second.append(b.submit([_job("p2", "b2")]))
    until("the second write in flight with the first", lambda: gate.calls == [1, 2])
    third = [b.submit([_job(f"p{i}", f"b{i}")]) for i in (3, 4, 5)]
    time.sleep(0.2)
    assert (2, [1, 2]) == (b.in_flight, gate.calls)     # both writers busy: they wait
    assert not any(f.done() for f in [first, *second, *third])
    gate.event.set()
    assert [["b0"], ["b1"], ["b2"], ["b3"], ["b4"], ["b5"]] == [
        f.result(5) for f in [first, *second, *third]]
    assert [1, 2, 3] == gate.calls
    until("no write in flight", lambda: b.in_flight == 0)
    b.close()


def test_an_error_of_the_write_reaches_every_waiter(tmp_path: Path) -> None:
    """An OSError of a write fails every submission it carried (none is lost), and frees
    their ids: the same submission then goes through."""
    cfg, layout = _setup(tmp_path)
    fail = [True]

    def write(lay: Layout, taken: Taken) -> list[list[str] | Exception]:
        if fail[0]:
            raise OSError("disk full")
        return write_taken(lay, taken)

    b = Batcher(cfg, layout, write=write)
    fut = b.submit([_job("x", "c0")])
    assert "disk full" == str(fut.exception(5))
    fail[0] = False
    assert ["c0"] == b.submit([_job("x", "c0")]).result(5)
    b.close()


def test_a_submission_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    """A submission decided with others whose content cannot be written (here text the
    validator would refuse, handed in behind its back) fails on its own with a JobError;
    the others of its request are answered with their ids and are durable in the inbox."""
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, write=gate.write)
    first = b.submit([_job("p0", "g0")])
    until("the first write begun", lambda: gate.calls == [1])
    rest = [b.submit([_job("p1", "g1")]), b.submit([{**_job("p2", "g2"), "prompt": "bad \ud800"}]),
            b.submit([_job("p3", "g3"), _job("p4", "g4")])]
    until("the second write begun", lambda: gate.calls == [1, 4])
    gate.event.set()
    assert (["g0"], ["g1"], ["g3", "g4"]) == (first.result(5), rest[0].result(5),
                                              rest[2].result(5))
    err = rest[1].exception(5)
    assert isinstance(err, JobError)
    assert str(err).startswith("the submission cannot be recorded: ")
    assert ["g0", "g1", "g3", "g4"] == _inbox_ids(layout)
    b.close()


def test_an_id_in_flight_counts_as_in_use(tmp_path: Path) -> None:
    """Another job under an id whose request is still being written is refused (the id is
    not in the inbox yet, but in flight); a job without an id never gets that id."""
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, writers=2, write=gate.write)
    first = b.submit([_job("p0", "d0")])
    until("the first write begun", lambda: gate.calls == [1])
    gate.event.set()
    assert ["d0"] == first.result(5)
    other = b.submit([_job("another", "d0")])
    assert isinstance(other.exception(5), Refused)
    assert ["d0"] == _inbox_ids(layout)
    b.close()


def test_a_retry_of_an_id_in_flight_waits_for_its_write_then_is_a_replay(
        tmp_path: Path) -> None:
    """A client's retry of a submission whose first try is still being written (its
    connection dropped) is not answered before that write is durable, then is answered as
    a replay: the job is written once. Another job under that id is then refused; what
    came meanwhile is decided after them."""
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, writers=2, write=gate.write)
    first = b.submit([_job("same", "e0")])
    until("the first write begun", lambda: gate.calls == [1])
    retry = b.submit([_job("same", "e0")])
    other = b.submit([_job("not the same", "e0")])
    free = b.submit([_job("free", "e1")])
    time.sleep(0.2)
    assert (False, False, False) == (retry.done(), other.done(), free.done())
    gate.event.set()
    assert (["e0"], ["e0"], ["e1"]) == (first.result(5), retry.result(5), free.result(5))
    assert isinstance(other.exception(5), Refused)
    assert ["e0", "e1"] == _inbox_ids(layout)
    b.close()


def test_the_submit_lock_is_held_while_writes_are_in_flight_and_given_back_idle(
        tmp_path: Path) -> None:
    """Another submitter (batchctl) cannot take the submit lock while a request the api
    decided is not in the inbox yet; once no write is in flight the lock is given back."""
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, write=gate.write)
    fut = b.submit([_job("p", "f0")])
    until("the write begun", lambda: gate.calls == [1])
    assert not _lock_free(layout)
    gate.event.set()
    assert ["f0"] == fut.result(5)
    until("the lock given back", lambda: _lock_free(layout))
    b.close()


def test_a_busy_api_lets_other_submitters_in_every_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held longer than SESSION, the lock is given back before the next decision (the
    writes in flight finish first, nothing new is decided meanwhile), so a waiting
    `batchctl submit` gets its turn even while the api always has work."""
    monkeypatch.setattr(submit_mod, "SESSION", 0.0)
    monkeypatch.setattr(submit_mod, "YIELD", 1.0)
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, write=gate.write)
    first = b.submit([_job("p", "h0")])
    until("the first write begun", lambda: gate.calls == [1])
    second = b.submit([_job("p", "h1")])
    time.sleep(0.3)
    assert [1] == gate.calls            # not decided while the session's writes are out
    assert not _lock_free(layout)
    gate.event.set()
    assert ["h0"] == first.result(5)
    until("the lock given back between decisions", lambda: _lock_free(layout), 0.9)
    assert ["h1"] == second.result(5)
    b.close()


def test_close_answers_what_waits(tmp_path: Path) -> None:
    """close() decides what is queued and lets every write finish: no Future is left
    unanswered, and the lock is given back."""
    cfg, layout = _setup(tmp_path)
    b = Batcher(cfg, layout)
    futs: list[Future[list[str]]] = [b.submit([_job("p", f"k{i}")]) for i in range(20)]
    b.close()
    assert [[f"k{i}"] for i in range(20)] == [f.result(0) for f in futs]
    assert _lock_free(layout)


def test_an_unexpected_error_of_one_submission_is_its_own(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    """An unexpected error while one submission is taken (here its `resume` lookup) is that
    submission's answer; the others of the group are accepted and written."""
    from supervisor.state import submission
    from supervisor.state.submission import accept_many

    def boom(*_: Any, **__: Any) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(submission, "resolve_resumes", boom)
    cfg, layout = _setup(tmp_path)
    good = _job("p", "ok1")
    odd = {**_job("p", "r1"), "resume": "old"}
    got = accept_many(cfg, layout, [[good], [odd]])
    assert ["ok1"] == got[0]
    assert isinstance(got[1], ValueError) and "boom" == str(got[1])


def test_the_event_loop_is_answered_on_the_loop_one_callback_per_request(
        tmp_path: Path) -> None:
    """Given the event loop, submit_async gives asyncio Futures settled on the loop, all of
    one request's in one callback (one wake-up of the loop per request written, not per
    POST); a refusal is raised there too. Without the loop, the concurrent Future wrapped."""
    import asyncio

    cfg, layout = _setup(tmp_path)
    wakes: list[int] = []

    async def main() -> tuple[list[Any], list[Any]]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(cb: Any, *args: Any, **kw: Any) -> Any:
            if cb is submit_mod._settle_all:
                wakes.append(len(args[0]))
            return real(cb, *args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        b = Batcher(cfg, layout, loop=loop)
        futs = [b.submit_async([_job("p", f"m{i}")]) for i in range(3)]
        futs.append(b.submit_async([_job("other", "m0")]))
        got = await asyncio.gather(*futs, return_exceptions=True)
        wrapped = Batcher(cfg, Layout(tmp_path / "other"))
        plain = await asyncio.gather(wrapped.submit_async([_job("p", "w0")]))
        b.close()
        wrapped.close()
        return got, plain

    got, plain = asyncio.run(main())
    assert [["m0"], ["m1"], ["m2"]] == got[:3]
    assert isinstance(got[3], Refused)
    assert [["w0"]] == plain
    assert (4, True) == (sum(wakes), len(wakes) < 4)


def test_a_refused_decision_gives_the_lock_back(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A decision that fails as a whole (here the ids in use cannot be read) answers its
    submissions with the error and, with no write in flight, gives the submit lock back:
    an idle api never keeps batchctl waiting."""
    from supervisor.state.view import Unreadable

    def unreadable(*_: Any, **__: Any) -> Any:
        raise Unreadable("cannot read the job queue")

    monkeypatch.setattr(submit_mod, "ids_in_use", unreadable)
    cfg, layout = _setup(tmp_path)
    b = Batcher(cfg, layout)
    assert isinstance(b.submit([_job("p", "u0")]).exception(5), Unreadable)
    until("the lock given back", lambda: _lock_free(layout))
    b.close()


def test_close_answers_a_retry_that_waits_for_a_write(tmp_path: Path) -> None:
    """close() while a retry waits for its first try's write: the write finishes, the retry
    is then decided (a replay) and answered; no Future is left unanswered."""
    cfg, layout = _setup(tmp_path)
    gate = Gate()
    b = Batcher(cfg, layout, write=gate.write)
    first = b.submit([_job("same", "z0")])
    until("the first write begun", lambda: gate.calls == [1])
    retry = b.submit([_job("same", "z0")])
    closer = threading.Thread(target=b.close)
    closer.start()
    gate.event.set()
    closer.join(10)
    assert (["z0"], ["z0"]) == (first.result(0), retry.result(0))
    assert ["z0"] == _inbox_ids(layout)
