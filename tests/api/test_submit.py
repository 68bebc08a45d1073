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
