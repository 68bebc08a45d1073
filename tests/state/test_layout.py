"""Tests of supervisor/_layout.py: record read/write (missing vs corrupt vs wrong schema or
version, quarantine naming) and the names under state_dir."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import OPTIONAL_WORKERS, WORKER_NAMES
from supervisor.state import layout as _layout
from supervisor.state.atomic import Corrupt, Missing, dump_json
from supervisor.state.layout import (
    PID,
    READY,
    REQUEST,
    Layout,
    RecordKind,
    read_record,
    send_request,
    write_record,
)
from tests.crashfs import CrashFS, explore
from tests.helpers import CountingFS

KINDS = sorted((v for v in vars(_layout).values() if isinstance(v, RecordKind)),
               key=lambda k: k.schema)
CORRUPTED = re.compile(r"(?P<name>.+)\.corrupted\.\d{8}T\d{6}\.\d{6}Z")


def _full(kind: RecordKind) -> dict[str, Any]:
    return {key: f"value of {key}" for key in kind.required}


def test_every_kind_is_exported_and_distinct() -> None:
    """Each RecordKind constant is in __all__ and has its own schema name."""
    names = [n for n, v in vars(_layout).items() if isinstance(v, RecordKind)]
    assert set(names) <= set(_layout.__all__)
    assert len(KINDS) == len({k.schema for k in KINDS})
    assert len(KINDS) >= 12


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.schema)
def test_every_kind_round_trips(tmp_path: Path, kind: RecordKind) -> None:
    """write_record then read_record gives the data back with schema and v added."""
    p = tmp_path / "r.json"
    write_record(kind, p, _full(kind))
    assert {**_full(kind), "schema": kind.schema, "v": kind.version} == read_record(
        kind, p, owner=True)


def test_write_record_sets_schema_and_version_and_keeps_the_input(tmp_path: Path) -> None:
    """write_record stamps schema and v (over any caller value) without mutating the dict."""
    data = {"id": "r1", "kind": "cancel", "schema": "wrong", "v": 99}
    write_record(REQUEST, tmp_path / "r.json", data)
    assert data == {"id": "r1", "kind": "cancel", "schema": "wrong", "v": 99}
    assert (tmp_path / "r.json").read_bytes() == dump_json(
        {"id": "r1", "kind": "cancel", "schema": "batchd.request", "v": 1})


def test_validate_names_what_is_wrong() -> None:
    """validate returns None for a good record, else a reason naming the problem."""
    good = {"pid": 1, "start": 2, "started_at": "x", "schema": "batchd.pid", "v": 1}
    assert PID.validate(good) is None
    assert PID.validate([good]) == "expected a JSON object, found list"
    assert "schema is 'batchd.job'" in str(PID.validate({**good, "schema": "batchd.job"}))
    assert PID.validate({**good, "v": 2}) == "schema version is 2, this batchd reads 1"
    assert PID.validate({k: v for k, v in good.items() if k != "start"}) == "missing keys: start"


def test_missing_record_is_missing(tmp_path: Path) -> None:
    """No file: Missing (a normal state), and nothing created or quarantined."""
    pid_file = tmp_path / "batchd.pid"
    assert Missing(str(pid_file)) == read_record(PID, pid_file, owner=True)
    assert os.listdir(tmp_path) == []


def _quarantined(folder: Path) -> list[tuple[str, bytes]]:
    out = []
    for name in sorted(os.listdir(folder)):
        m = CORRUPTED.fullmatch(name)
        if m:
            out.append((m["name"], (folder / name).read_bytes()))
    return out


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "empty file"),
    (b"\x00\x00\x00\x00", "not valid JSON"),
    (b'{"schema": "batchd.ready", "v": 1, "worker"', "not valid JSON"),
    (b'"a string"', "expected a JSON object"),
    (b'{"schema": "batchd.pid", "v": 1, "pid": 1, "start": 2, "started_at": "t"}',
     "schema is 'batchd.pid'"),
    (b'{"schema": "batchd.ready", "v": 2, "worker": "w", "pid": 1, "start": 2, '
     b'"ready_at": "t"}', "schema version is 2"),
    (b'{"schema": "batchd.ready", "v": 1, "worker": "w"}', "missing keys: pid, start, ready_at"),
])
def test_owner_quarantines_a_bad_record(tmp_path: Path, raw: bytes, why: str) -> None:
    """The owner's read of an empty, garbled, foreign-schema, future-version or incomplete
    record returns Corrupt with the reason and moves the bytes to NAME.corrupted.<ts>."""
    p = tmp_path / "scheduler.json"
    p.write_bytes(raw)
    got = read_record(READY, p, owner=True)
    assert isinstance(got, Corrupt)
    assert why in got.reason
    assert got.moved_to is not None
    assert os.path.dirname(got.moved_to) == str(tmp_path)
    assert [("scheduler.json", raw)] == _quarantined(tmp_path)
    assert Missing(str(p)) == read_record(READY, p, owner=True)


def test_a_reader_that_is_not_the_owner_moves_nothing(tmp_path: Path) -> None:
    """owner=False: Corrupt is reported, the file stays for its owner to deal with."""
    p = tmp_path / "scheduler.json"
    p.write_bytes(b"{}")
    got = read_record(READY, p, owner=False)
    assert isinstance(got, Corrupt)
    assert got.moved_to is None
    assert os.listdir(tmp_path) == ["scheduler.json"]


def test_repeated_quarantines_keep_every_copy(tmp_path: Path) -> None:
    """Two corrupt versions quarantined one after the other are both kept."""
    p = tmp_path / "batchd.pid"
    for raw in (b"one", b"two"):
        p.write_bytes(raw)
        assert isinstance(read_record(PID, p, owner=True), Corrupt)
    assert sorted([("batchd.pid", b"one"), ("batchd.pid", b"two")]) == sorted(
        _quarantined(tmp_path))


def test_write_record_over_an_existing_record_survives_every_crash(tmp_path: Path) -> None:
    """A power cut while replacing a record never leaves one the owner must quarantine."""
    def setup(root: str) -> None:
        write_record(PID, os.path.join(root, "batchd.pid"),
                     {"pid": 1, "start": 10, "started_at": "then"})

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        write_record(PID, os.path.join(root, "batchd.pid"),
                     {"pid": 2, "start": 20, "started_at": "now"}, fs=fs)
        yield

    def recover(root: str) -> Any:
        got = read_record(PID, os.path.join(root, "batchd.pid"), owner=True)
        assert isinstance(got, dict), got
        return got["pid"]

    report = explore(tmp_path, setup=setup, workload=workload, recover=recover,
                     expected=[1, 2])
    assert {0, 1} == set(report.recovered_to)


# -- names ------------------------------------------------------------------------------------
def test_worker_names_are_in_startup_order() -> None:
    """The scheduler starts first, then locks, then reaper and callbacks, then the api
    (DESIGN.md); the api alone is optional."""
    assert WORKER_NAMES == ("scheduler", "locks", "reaper", "callbacks", "api")
    assert frozenset({"api"}) == OPTIONAL_WORKERS


def test_layout_names_are_distinct_and_under_the_root(tmp_path: Path) -> None:
    """Every path of a Layout lies under state_dir and no two files share a name."""
    lay = Layout(tmp_path)
    files = [lay.lock_file, lay.pid_file, lay.workers_file, lay.startup_log,
             lay.reply_file("r1"), lay.ready_file("locks"), lay.worker_state("locks"),
             lay.job_output("j"), lay.job_events("j"), lay.job_sentinel("j"),
             lay.job_result("j"), lay.job_spec("j")]
    dirs = [*lay.all_dirs(), lay.job_dir("j"), lay.worker_dir("reaper")]
    for p in files + dirs:
        assert p.is_relative_to(tmp_path), p
    assert len(files) == len(set(files))
    assert not set(files) & set(dirs)


def test_layout_spells_the_documented_names(tmp_path: Path) -> None:
    """The names are those of the module docstring (other tools read them)."""
    lay = Layout(tmp_path)
    assert lay.pid_file == tmp_path / "batchd.pid"
    assert lay.reply_file("r1") == tmp_path / "control" / "replies" / "r1.json"
    assert lay.ready_file("locks") == tmp_path / "ready" / "locks.json"
    assert lay.inbox("scheduler") == tmp_path / "scheduler" / "inbox"
    assert lay.wal_dir == tmp_path / "scheduler" / "wal"
    assert lay.job_sentinel("j") == tmp_path / "jobs" / "j" / "sentinel.json"


def test_all_dirs_covers_every_inbox_and_the_wal(tmp_path: Path) -> None:
    """all_dirs lists the root, the control folders, ready, jobs, the WAL and each inbox (the
    api has none: it only writes into the others')."""
    lay = Layout(tmp_path)
    want = {lay.root, lay.control_inbox, lay.control_replies, lay.ready_dir, lay.jobs_dir,
            lay.wal_dir, *(lay.inbox(w) for w in WORKER_NAMES if w != "api")}
    assert want <= set(lay.all_dirs())
    assert lay.inbox("api") not in lay.all_dirs()


def test_send_request_of_a_hint_skips_both_fsyncs(tmp_path: Path) -> None:
    """durable=False (a hint): the same whole request by rename, no fsync of the file or
    the inbox; the default makes it durable (file and folder)."""
    layout = Layout(tmp_path / "state")
    fs = CountingFS()
    send_request(layout, "scheduler", {"id": "warm", "kind": "cancel"}, fs=fs)
    fs.syncs.clear()
    path = send_request(layout, "scheduler", {"id": "h", "kind": "lock_granted"}, fs=fs,
                        durable=False)
    assert ([], "lock_granted") == (fs.syncs, read_record(REQUEST, path, owner=False)["kind"])
    send_request(layout, "scheduler", {"id": "r", "kind": "cancel"}, fs=fs)
    assert ["file", "inbox"] == fs.syncs


def test_send_request_drops_a_whole_request_named_by_its_id(tmp_path: Path) -> None:
    """The request lands as <inbox>/<id>.json (a REQUEST record); a replay rewrites the same
    file; an inbox removed meanwhile is made again."""
    layout = Layout(tmp_path / "state")
    body = {"id": "r1", "kind": "cancel", "job": "j"}
    path = send_request(layout, "scheduler", body)
    assert layout.inbox("scheduler") / "r1.json" == path
    assert {**body, "schema": REQUEST.schema, "v": REQUEST.version} == read_record(
        REQUEST, path, owner=False)
    send_request(layout, "scheduler", body)
    assert ["r1.json"] == sorted(os.listdir(layout.inbox("scheduler")))
    shutil.rmtree(layout.inbox("scheduler"))
    send_request(layout, "scheduler", {**body, "id": "r2"})
    assert ["r2.json"] == sorted(os.listdir(layout.inbox("scheduler")))


def test_workspace_staging_names_and_their_owner(tmp_path: Path) -> None:
    """A workspace's staging folder is `.prep.<id>+<token>` beside it; staging_owner reads
    the job id back from it (and from the older `.prep.<id>`), None from anything else."""
    staging = _layout.workspace_staging(tmp_path / "ws" / "j1.a", "00ff")
    assert (tmp_path / "ws" / ".prep.j1.a+00ff") == staging
    assert ["j1.a", "j1.a", None, None] == [
        _layout.staging_owner(n) for n in (staging.name, ".prep.j1.a", "j1.a", ".reap.j1")]
