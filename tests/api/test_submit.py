"""The submit writer: concurrent submissions share one accept (one durable request), each
answered with its own ids or its own refusal."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from supervisor.api.submit import Batcher
from supervisor.config import Config
from supervisor.state.layout import Layout
from supervisor.state.submission import Refused
from tests.helpers import until


def test_waiting_submissions_go_out_together_and_are_answered_each(tmp_path: Path) -> None:
    """While one write is in progress the next submissions queue up; they then go out in
    ONE accept call, and each Future gets its own answer."""
    calls: list[int] = []
    gate = threading.Event()

    def accept(cfg: Config, layout: Layout,
               groups: list[list[dict[str, Any]]]) -> list[list[str] | Refused]:
        calls.append(len(groups))
        gate.wait(5)
        return [Refused("taken") if g[0]["prompt"] == "bad" else [g[0]["prompt"]]
                for g in groups]

    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path)
    b = Batcher(cfg, Layout(tmp_path), accept=accept)
    first = b.submit([{"prompt": "p0"}])
    until("the first write begun", lambda: calls == [1])
    rest = [b.submit([{"prompt": p}]) for p in ("p1", "bad", "p3")]
    gate.set()
    assert ["p0"] == first.result(5)
    assert ["p1"] == rest[0].result(5)
    assert isinstance(rest[1].exception(5), Refused)
    assert ["p3"] == rest[2].result(5)
    assert [1, 3] == calls
    b.close()


def test_an_error_of_the_write_reaches_every_waiter(tmp_path: Path) -> None:
    """An OSError of the one write fails every submission it carried (none is lost)."""
    def accept(cfg: Config, layout: Layout, groups: list[list[dict[str, Any]]]) -> list[Any]:
        raise OSError("disk full")

    b = Batcher(Config(state_dir=tmp_path, workspace_dir=tmp_path), Layout(tmp_path),
                accept=accept)
    fut = b.submit([{"prompt": "x"}])
    assert "disk full" == str(fut.exception(5))
    b.close()


def test_a_submission_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    """A submission grouped with others whose content cannot be written (here text the
    validator would refuse, handed in behind its back) fails on its own with a JobError;
    the others of its group are answered with their ids and are durable in the inbox. (It
    used to fail the shared write, and so every waiter: a 500 for good submissions.)"""
    from supervisor.state.submission import Checker, JobError, accept_many

    gate = threading.Event()
    calls: list[int] = []

    def accept(cfg: Config, layout: Layout, groups: list[list[dict[str, Any]]]) -> list[Any]:
        calls.append(len(groups))
        gate.wait(5)
        return accept_many(cfg, layout, groups)

    def job(prompt: str, job_id: str) -> dict[str, Any]:
        checked = Checker(None).check({"agent": "shell", "prompt": "p", "id": job_id})
        return {**checked, "prompt": prompt}

    layout = Layout(tmp_path / "state")
    b = Batcher(Config(state_dir=layout.root, workspace_dir=tmp_path), layout, accept=accept)
    first = b.submit([job("p0", "g0")])
    until("the first write begun", lambda: calls == [1])
    rest = [b.submit([job("p1", "g1")]), b.submit([job("bad \ud800", "g2")]),
            b.submit([job("p3", "g3"), job("p4", "g4")])]
    gate.set()
    assert (["g0"], ["g1"], ["g3", "g4"]) == (first.result(5), rest[0].result(5),
                                              rest[2].result(5))
    err = rest[1].exception(5)
    assert isinstance(err, JobError)
    assert str(err).startswith("the submission cannot be recorded: ")
    assert [1, 3] == calls
    b.close()
    from supervisor.state.layout import REQUEST, read_record

    inbox = layout.inbox("scheduler")
    ids = sorted(j["id"] for name in inbox.iterdir() if name.suffix == ".json"
                 for j in read_record(REQUEST, name, owner=False)["jobs"])
    assert ["g0", "g1", "g3", "g4"] == ids


def test_an_unexpected_error_of_one_submission_is_its_own(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    """An unexpected error while one submission is taken (here its `resume` lookup) is that
    submission's answer; the others of the group are accepted and written."""
    from supervisor.state import submission
    from supervisor.state.submission import Checker, accept_many

    def boom(*_: Any, **__: Any) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(submission, "resolve_resumes", boom)
    layout = Layout(tmp_path / "state")
    cfg = Config(state_dir=layout.root, workspace_dir=tmp_path)
    good = Checker(None).check({"agent": "shell", "prompt": "p", "id": "ok1"})
    odd = {**Checker(None).check({"agent": "shell", "prompt": "p", "id": "r1"}),
           "resume": "old"}
    got = accept_many(cfg, layout, [[good], [odd]])
    assert ["ok1"] == got[0]
    assert isinstance(got[1], ValueError) and "boom" == str(got[1])
