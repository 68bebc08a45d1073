"""Tests for supervisor.log: JSON and console lines, level filtering, file output, forks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from supervisor import log as _log
from supervisor.config import ConfigError, LogConfig


@pytest.fixture(autouse=True)
def _back_to_stderr() -> Iterator[None]:
    """Each test leaves logging as it found it: info, console, stderr (closing its files)."""
    yield
    _log.setup(LogConfig(), name="pytest")


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_carry_the_fixed_keys(tmp_path: Path) -> None:
    """JSON format: one object per line with timestamp, level, event, name, pid, bound keys."""
    log_file = tmp_path / "b.log"
    log = _log.setup(LogConfig(format="json", file=log_file), name="scheduler")
    log.info("job started", job="j1", attempt=2)
    log.bind(job="j2").warning("stale heartbeat")
    first, second = lines(log_file)
    assert ["timestamp", "level", "event", "name", "pid", "job", "attempt"] == list(first)
    assert {"level": "info", "event": "job started", "name": "scheduler", "pid": os.getpid(),
            "job": "j1", "attempt": 2} == {k: v for k, v in first.items() if k != "timestamp"}
    assert ("warning", "j2") == (second["level"], second["job"])
    stamp = datetime.fromisoformat(str(first["timestamp"]))
    assert timedelta(0) == stamp.utcoffset()


def test_level_filtering(tmp_path: Path) -> None:
    """Only events at or above log.level are written."""
    log_file = tmp_path / "b.log"
    log = _log.setup(LogConfig(level="warning", format="json", file=log_file), name="locks")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [("warning", "w"), ("error", "e")] == [(d["level"], d["event"]) for d in lines(log_file)]


def test_file_is_appended_to(tmp_path: Path) -> None:
    """log.file is opened in append mode: what was there stays, each setup adds."""
    log_file = tmp_path / "b.log"
    log_file.write_text('{"event": "old"}\n')
    _log.setup(LogConfig(format="json", file=log_file), name="a").info("one")
    _log.setup(LogConfig(format="json", file=log_file), name="b").info("two")
    assert [("old", None), ("one", "a"), ("two", "b")] == [
        (d["event"], d.get("name")) for d in lines(log_file)]


def test_console_format_is_plain_key_value(tmp_path: Path) -> None:
    """Console format: a readable line with key=value pairs and no colour codes off a tty."""
    log_file = tmp_path / "b.log"
    _log.setup(LogConfig(format="console", file=log_file), name="reaper").info("swept", n=3)
    text = log_file.read_text()
    assert "\x1b" not in text
    assert 1 == text.count("\n")
    assert ["[info", "swept", "name=reaper", f"pid={os.getpid()}", "n=3"] == [
        w for w in text.split() if w in ("[info", "swept") or "=" in w]


def test_stderr_is_the_default(capfd: pytest.CaptureFixture[str]) -> None:
    """Without log.file, lines go to standard error (fd 2), nothing to stdout."""
    _log.setup(LogConfig(format="json"), name="batchd").info("hello")
    out, err = capfd.readouterr()
    assert ("", "hello", "batchd") == (out, json.loads(err)["event"], json.loads(err)["name"])


def test_loggers_follow_a_later_setup(tmp_path: Path) -> None:
    """A logger made before setup() writes with the latest level, format and file."""
    early = _log.get("callbacks")
    log_file = tmp_path / "b.log"
    _log.setup(LogConfig(level="debug", format="json", file=log_file), name="batchd")
    early.debug("late")
    assert [("late", "callbacks")] == [(d["event"], d["name"]) for d in lines(log_file)]


def test_forked_child_rebinds_pid_and_name(tmp_path: Path) -> None:
    """setup() again in a forked child: its lines carry the child's pid and worker name."""
    log_file = tmp_path / "b.log"
    parent_log = _log.setup(LogConfig(format="json", file=log_file), name="batchd")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _log.setup(LogConfig(format="json", file=log_file), name="locks").info("child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    parent_log.info("parent")
    assert 0 == os.waitstatus_to_exitcode(status)
    assert [("child", "locks", pid), ("parent", "batchd", os.getpid())] == [
        (d["event"], d["name"], d["pid"]) for d in lines(log_file)]


def test_unopenable_file_is_a_config_error(tmp_path: Path) -> None:
    """A log.file in a missing folder is a ConfigError naming the key and path; nothing made."""
    missing = tmp_path / "no" / "b.log"
    with pytest.raises(ConfigError) as info:
        _log.setup(LogConfig(file=missing), name="batchd")
    assert f"log.file: cannot open {missing}: No such file or directory" == str(info.value)
    assert [] == list(tmp_path.iterdir())


def test_exceptions_are_rendered_in_json(tmp_path: Path) -> None:
    """log.exception() puts the traceback in an `exception` key at level error."""
    log_file = tmp_path / "b.log"
    log = _log.setup(LogConfig(format="json", file=log_file), name="scheduler")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    (entry,) = lines(log_file)
    assert ("error", True) == (entry["level"], "RuntimeError: boom" in str(entry["exception"]))


def test_wal_corruption_reaches_the_configured_file_as_json(tmp_path: Path) -> None:
    """A damaged WAL segment found at recovery is logged through the configured output:
    the log file, JSON, with the program's name and the WAL as component (it used to go
    to stdlib logging, which ignored log.file and the format)."""
    from supervisor.state.queue import JobQueue

    log_file = tmp_path / "b.log"
    _log.setup(LogConfig(format="json", file=log_file), name="scheduler")
    wal = tmp_path / "wal"
    with JobQueue.open(wal) as q:
        q.enqueue("a", {"agent": "shell"})
        q.enqueue("b", {"agent": "shell"})
    segment = sorted(wal.glob("*.wal"))[0]
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF                      # inside the first record: damage, then valid ones
    segment.write_bytes(bytes(data))
    JobQueue.open(wal).close()
    found = [line for line in lines(log_file) if line.get("component") == "wal"]
    assert found, log_file.read_text()
    assert {"scheduler"} == {line["name"] for line in found}
    assert "error" in {line["level"] for line in found}


def test_stdlib_loggers_are_bridged_into_the_same_output(tmp_path: Path) -> None:
    """A third-party library's stdlib logger writes through ours: same file, JSON, our
    name and pid, its logger name as component; below INFO it is left out."""
    import logging

    log_file = tmp_path / "b.log"
    _log.setup(LogConfig(format="json", file=log_file, level="debug"), name="callbacks")
    logging.getLogger("urllib3.connectionpool").warning("Retrying %s", "POST")
    logging.getLogger("urllib3.connectionpool").debug("chatter")
    (line,) = lines(log_file)
    assert {"level": "warning", "event": "Retrying POST", "name": "callbacks",
            "component": "urllib3.connectionpool", "pid": os.getpid()} \
        == {k: v for k, v in line.items() if k != "timestamp"}
