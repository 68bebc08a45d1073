"""Control requests: nothing is written while batchd is down; a reply is awaited."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Config, WorkerConfig
from supervisor.state import control
from supervisor.state.clock import MockClock
from supervisor.state.layout import REPLY, Layout, write_record


def test_nothing_is_written_while_batchd_is_down(tmp_path: Path) -> None:
    """NotRunning, and no control inbox appears."""
    layout = Layout(tmp_path)
    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    with pytest.raises(control.NotRunning):
        control.send_control(cfg, layout, "restart", "locks")
    assert not layout.control_inbox.exists()


def test_reply_timeout_follows_stopwaitsecs(tmp_path: Path) -> None:
    """stop/restart wait stopwaitsecs + 10 s; the others 10 s."""
    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path,
                 workers={"locks": WorkerConfig(stopwaitsecs=7.0)})
    assert [17.0, 17.0, 10.0, 10.0] == [control.reply_timeout(cfg, op, w) for op, w in (
        ("stop", "locks"), ("restart", "locks"), ("start", "locks"), ("reload", None))]


def test_an_existing_reply_is_returned_and_none_is_no_reply(tmp_path: Path) -> None:
    """A reply already written is the answer; none and no batchd: NoReply at once."""
    layout = Layout(tmp_path)
    layout.control_replies.mkdir(parents=True)
    write_record(REPLY, layout.reply_file("r1"), {"id": "r1", "ok": True, "message": "m"})
    assert "m" == control.wait_reply(layout, "r1", 1.0)["message"]
    with pytest.raises(control.NoReply, match="stopped before answering"):
        control.wait_reply(layout, "r2", 5.0, clock=MockClock())
