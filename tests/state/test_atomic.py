"""Tests of supervisor/_atomic.py: every function, and its crash points under tests/crashfs.py."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.atomic import (
    CORRUPT_MARK,
    TMP_PREFIX,
    Corrupt,
    Missing,
    clean_tmp,
    discard,
    dump_json,
    ensure_dir,
    is_tmp_name,
    quarantine,
    read_bytes,
    read_json,
    remove,
    utc_stamp,
    write_bytes,
    write_json,
)
from supervisor.state.fs import OsFS
from tests.crashfs import CrashFS, explore, snapshot_tree
from tests.helpers import CountingFS

STAMP = r"\d{8}T\d{6}\.\d{6}Z"


def _needs_v(obj: Any) -> str | None:
    return None if isinstance(obj, dict) and "v" in obj else "no v"


# -- ordinary unit tests ------------------------------------------------------------------------
def test_utc_stamp_is_utc_with_microseconds() -> None:
    """utc_stamp formats a given instant in UTC, sortable and file-name safe."""
    assert utc_stamp(0) == "19700101T000000.000000Z"
    assert utc_stamp(1_800_000_000.25) == "20270115T080000.250000Z"
    assert re.fullmatch(STAMP, utc_stamp())


def test_is_tmp_name_knows_only_temp_names() -> None:
    """Temp names start with .tmp.; state names and look-alikes do not count."""
    assert is_tmp_name(".tmp.job.json.123.abcd1234")
    assert not is_tmp_name("job.json")
    assert not is_tmp_name("tmp.job.json")
    assert not is_tmp_name("job.json.corrupted.20260101T000000.000000Z")


def test_dump_json_is_canonical() -> None:
    """Sorted keys, no spaces, UTF-8 (not \\u escapes), one trailing newline."""
    assert dump_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}\n'.encode()


def test_write_bytes_creates_and_replaces_without_leftovers(tmp_path: Path) -> None:
    """write_bytes creates the file, then replaces it; no temp file remains; mode is applied."""
    p = tmp_path / "f"
    write_bytes(p, b"one")
    write_bytes(p, b"two", mode=0o600)
    assert p.read_bytes() == b"two"
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["f"]


class _FailingWrites(OsFS):
    """The real FS, except that writes fail as on a full disk."""

    def write(self, fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")


def test_write_bytes_failure_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    """A failed write raises, leaves the target as it was and removes its temp file."""
    p = tmp_path / "f"
    p.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        write_bytes(p, b"new", fs=_FailingWrites())
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_write_json_round_trips(tmp_path: Path) -> None:
    """What write_json writes, read_json reads back; the bytes are dump_json's."""
    p = tmp_path / "r.json"
    write_json(p, {"v": 1, "s": "ü"})
    assert read_json(p) == {"v": 1, "s": "ü"}
    assert dump_json({"v": 1, "s": "ü"}) == p.read_bytes()


def test_read_bytes_missing_and_present(tmp_path: Path) -> None:
    """read_bytes returns the bytes, or Missing naming the path."""
    assert Missing(str(tmp_path / "nope")) == read_bytes(tmp_path / "nope")
    (tmp_path / "f").write_bytes(b"x")
    assert read_bytes(tmp_path / "f") == b"x"


def test_read_json_missing_is_not_corrupt(tmp_path: Path) -> None:
    """A file that is not there is Missing, and nothing is created."""
    assert Missing(str(tmp_path / "r.json")) == read_json(tmp_path / "r.json")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b'{"v": 1', "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b'{"v": 1}\x00\x00\x00', "not valid JSON"),
    (b"1" * 5000, "not valid JSON"),  # int() digit limit: a ValueError, not a JSONDecodeError
    (b"[" * 100_000, "not valid JSON"),  # nesting too deep: a RecursionError
    (b'{"x": 1}', "no v"),
    (b"[1]", "no v"),
])
def test_read_json_quarantines_unusable_files(tmp_path: Path, raw: bytes, why: str) -> None:
    """Empty, unparseable or invalid content is moved to NAME.corrupted.<ts>, bytes kept."""
    p = tmp_path / "r.json"
    p.write_bytes(raw)
    got = read_json(p, validate=_needs_v)
    assert isinstance(got, Corrupt)
    assert str(p) == got.path
    assert why in got.reason
    assert got.moved_to is not None
    assert re.fullmatch(rf"r\.json\.corrupted\.{STAMP}", os.path.basename(got.moved_to))
    assert raw == Path(got.moved_to).read_bytes()
    assert not p.exists()
    assert Missing(str(p)) == read_json(p, validate=_needs_v)


def test_read_json_by_a_non_owner_moves_nothing(tmp_path: Path) -> None:
    """move_corrupt=False reports Corrupt but leaves the file where it is."""
    p = tmp_path / "r.json"
    p.write_bytes(b"{")
    got = read_json(p, move_corrupt=False)
    assert Corrupt(str(p), None, got.reason) == got
    assert p.read_bytes() == b"{"


def test_quarantine_names_and_collisions(tmp_path: Path) -> None:
    """quarantine renames to NAME.corrupted.<stamp>, adding .1, .2 on collisions."""
    p = tmp_path / "f"
    moved = []
    for _ in range(3):
        p.write_bytes(b"x")
        moved.append(quarantine(p, now=0))
    stamp = f"{tmp_path}/f{CORRUPT_MARK}19700101T000000.000000Z"
    assert [stamp, f"{stamp}.1", f"{stamp}.2"] == moved
    assert quarantine(p) is None  # vanished meanwhile


def test_ensure_dir_creates_parents_and_is_idempotent(tmp_path: Path) -> None:
    """ensure_dir creates every missing level and is a no-op the second time."""
    d = tmp_path / "a" / "b" / "c"
    ensure_dir(d)
    ensure_dir(d)
    assert d.is_dir()


def test_remove_reports_whether_it_removed(tmp_path: Path) -> None:
    """remove returns True when it unlinked the file, False when it was already gone."""
    p = tmp_path / "f"
    p.write_bytes(b"x")
    assert remove(p) is True
    assert remove(p) is False
    assert not p.exists()


def test_clean_tmp_removes_only_old_temp_files(tmp_path: Path) -> None:
    """Only temp names older than the grace go; young temps and state files stay."""
    old, young, state = (tmp_path / f"{TMP_PREFIX}a.1.x", tmp_path / f"{TMP_PREFIX}b.1.y",
                         tmp_path / "state.json")
    for p in (old, young, state):
        p.write_bytes(b"x")
    os.utime(old, (1000, 1000))
    os.utime(young, (1500, 1500))
    assert [str(old)] == clean_tmp(tmp_path, grace_s=100, now=1550)
    assert sorted([young.name, state.name]) == sorted(os.listdir(tmp_path))
    assert clean_tmp(tmp_path / "missing", grace_s=0) == []


# -- crash points ---------------------------------------------------------------------------------
OLD, NEW, NEWER = {"v": 0, "pad": "o" * 40}, {"v": 1, "pad": "n" * 60}, {"v": 2}


def _leftovers_are_tmp_and_cleaned(root: str, name: str) -> None:
    """Anything beside `name` is a recognisable temp file; clean_tmp spares it during the
    grace and removes it after."""
    others = [n for n in os.listdir(root) if n != name]
    assert all(is_tmp_name(n) for n in others), others
    if others:
        mtime = max(os.stat(os.path.join(root, n)).st_mtime for n in others)
        assert clean_tmp(root, grace_s=60, now=mtime + 59) == []
        assert len(others) == len(clean_tmp(root, grace_s=60, now=mtime + 61))
    assert os.listdir(root) == ([name] if os.path.exists(os.path.join(root, name)) else [])


def _recover_target(root: str) -> Any:
    """Recovery of one state file: clean temps, read it; the picture is what it holds."""
    target = os.path.join(root, "r.json")
    raw = read_bytes(target)
    if not isinstance(raw, Missing):
        assert raw in (dump_json(OLD), dump_json(NEW), dump_json(NEWER)), raw
    _leftovers_are_tmp_and_cleaned(root, "r.json")
    got = read_json(target, validate=_needs_v)
    return "missing" if isinstance(got, Missing) else got


def test_write_json_over_an_existing_file_survives_every_crash(tmp_path: Path) -> None:
    """A power cut at any point of write_json leaves the target old or new, never a mix;
    temp leftovers are recognisable and cleaned after the grace."""
    def setup(root: str) -> None:
        write_json(os.path.join(root, "r.json"), OLD)

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        write_json(os.path.join(root, "r.json"), NEW, fs=fs)
        yield

    report = explore(tmp_path, setup=setup, workload=workload, recover=_recover_target,
                     expected=[OLD, NEW])
    assert report.points == 5  # open tmp, write, fsync, rename, fsync_dir
    assert {0, 1} == set(report.recovered_to)


def test_two_write_jsons_recover_to_an_acknowledged_prefix(tmp_path: Path) -> None:
    """Creating a file then replacing it: every crash shows missing, first or second value,
    never an unacknowledged-and-not-in-flight one."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        write_json(os.path.join(root, "r.json"), NEW, fs=fs)
        yield
        write_json(os.path.join(root, "r.json"), NEWER, fs=fs)
        yield

    report = explore(tmp_path, setup=lambda root: None, workload=workload,
                     recover=_recover_target, expected=["missing", NEW, NEWER])
    assert report.points == 10
    assert {0, 1, 2} == set(report.recovered_to)


def _recover_quarantine(root: str) -> Any:
    """The owner's recovery: read the record (quarantining it if corrupt); the picture is
    the set of files with corrupt names normalised."""
    read_json(os.path.join(root, "r.json"), validate=_needs_v)
    files, _ = snapshot_tree(root)
    return sorted((re.sub(STAMP, "<ts>", p), data) for p, data in files.items())


@pytest.mark.parametrize("raw", [b"", b'{"v":', b'{"x": 1}'])
def test_quarantine_survives_every_crash(tmp_path: Path, raw: bytes) -> None:
    """A power cut while quarantining never loses the evidence: it is either still under its
    name (and quarantined by the next read) or under NAME.corrupted.<ts>."""
    def setup(root: str) -> None:
        Path(root, "r.json").write_bytes(raw)

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        got = read_json(os.path.join(root, "r.json"), validate=_needs_v, fs=fs)
        assert isinstance(got, Corrupt)
        yield

    moved = [("r.json.corrupted.<ts>", raw)]
    report = explore(tmp_path, setup=setup, workload=workload, recover=_recover_quarantine,
                     expected=[moved, moved])
    assert report.points == 2  # rename, fsync_dir


def _dirs_and_file(root: str) -> Any:
    files, dirs = snapshot_tree(root)
    return ({"a", "a/b", "a/b/c"} <= dirs, files.get("a/b/c/r.json"))


def test_ensure_dir_then_write_survives_every_crash(tmp_path: Path) -> None:
    """Folders made by ensure_dir, and a file written in them, hold once acknowledged."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        ensure_dir(os.path.join(root, "a", "b", "c"), fs=fs)
        yield
        write_json(os.path.join(root, "a", "b", "c", "r.json"), NEW, fs=fs)
        yield

    report = explore(tmp_path, setup=lambda root: None, workload=workload,
                     recover=_dirs_and_file,
                     expected=[(False, None), (True, None), (True, dump_json(NEW))])
    assert report.points == 1 + 6 + 5  # fsync_dir of root's parent, (mkdir, fsync_dir) x 3,
    #                                    then write_json


def test_ensure_dir_makes_a_folder_left_by_a_killed_process_durable(tmp_path: Path) -> None:
    """A process killed between mkdir and fsync_dir leaves a folder that exists but is not
    durable; ensure_dir must still make it durable, or files written in it can vanish."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        fs.mkdir(os.path.join(root, "a"))  # the killed predecessor's half-done ensure_dir
        ensure_dir(os.path.join(root, "a", "b", "c"), fs=fs)
        write_json(os.path.join(root, "a", "b", "c", "r.json"), NEW, fs=fs)
        yield

    def recover(root: str) -> Any:
        return snapshot_tree(root)[0].get("a/b/c/r.json")

    explore(tmp_path, setup=lambda root: None, workload=workload, recover=recover,
            expected=[None, dump_json(NEW)])


def _present(root: str) -> Any:
    return sorted(os.listdir(root))


def test_remove_survives_every_crash(tmp_path: Path) -> None:
    """Once remove returned, the file stays gone; before, it is there with its content."""
    def setup(root: str) -> None:
        write_json(os.path.join(root, "r.json"), OLD)

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        assert remove(os.path.join(root, "r.json"), fs=fs)
        yield

    report = explore(tmp_path, setup=setup, workload=workload, recover=_present,
                     expected=[["r.json"], []])
    assert report.points == 2  # unlink, fsync_dir


def test_remove_of_a_file_a_killed_process_unlinked_is_durable(tmp_path: Path) -> None:
    """A process killed between unlink and fsync_dir leaves a removal that can revert; a
    later remove() that finds the file gone must still make that durable."""
    def setup(root: str) -> None:
        write_json(os.path.join(root, "r.json"), OLD)

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        fs.unlink(os.path.join(root, "r.json"))  # the killed predecessor's half-done remove
        assert not remove(os.path.join(root, "r.json"), fs=fs)
        yield

    explore(tmp_path, setup=setup, workload=workload, recover=_present,
            expected=[["r.json"], []])


def test_clean_tmp_survives_every_crash(tmp_path: Path) -> None:
    """A power cut while cleaning temps never touches the state file."""
    def setup(root: str) -> None:
        write_json(os.path.join(root, "r.json"), OLD)
        for n in (1, 2):
            p = Path(root, f"{TMP_PREFIX}r.json.1.{n}")
            p.write_bytes(b"{")
            os.utime(p, (0, 0))

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        assert len(clean_tmp(root, grace_s=10, fs=fs)) == 2
        yield

    def recover(root: str) -> Any:
        assert read_json(os.path.join(root, "r.json")) == OLD
        return "clean" if os.listdir(root) == ["r.json"] else "temps left"

    report = explore(tmp_path, setup=setup, workload=workload, recover=recover,
                     expected=["temps left", "clean"])
    assert report.points == 3  # unlink, unlink, fsync_dir


def test_a_folder_where_a_record_belongs_is_moved_aside_by_its_owner(tmp_path: Path) -> None:
    """read_json of a folder by its owner: Corrupt ("a folder, not a file"), the folder
    quarantined like a corrupt record (the chaos suite's "a folder in its place": left
    there, it failed every write of the record's writer, a crash loop for some workers);
    a reader that does not own it moves nothing."""
    (tmp_path / "state.json").mkdir()
    (tmp_path / "state.json" / "inside").write_text("x")
    got = read_json(tmp_path / "state.json", move_corrupt=False)
    assert Corrupt(str(tmp_path / "state.json"), None, "a folder, not a file") == got
    got = read_json(tmp_path / "state.json")
    assert isinstance(got, Corrupt) and got.moved_to is not None
    assert ([os.path.basename(got.moved_to)], "x") == (
        sorted(os.listdir(tmp_path)), (Path(got.moved_to) / "inside").read_text())


def test_a_write_blocked_by_a_folder_moves_it_aside(tmp_path: Path) -> None:
    """Found by the chaos suite: a folder in place of workers.json, ready/<w>.json,
    locks/state.json... failed each write of its one writer (the locks worker FATAL after
    four failed starts). The writer moves the folder aside and writes its record."""
    (tmp_path / "ready.json").mkdir()
    write_json(tmp_path / "ready.json", {"a": 1})
    [moved] = [n for n in os.listdir(tmp_path) if CORRUPT_MARK in n]
    assert ({"a": 1}, True) == (read_json(tmp_path / "ready.json"),
                                (tmp_path / moved).is_dir())
    assert sorted(["ready.json", moved]) == sorted(os.listdir(tmp_path))


def test_a_write_that_need_not_be_durable_skips_both_fsyncs(tmp_path: Path) -> None:
    """durable=False: the same atomic temp + rename, no fsync of the file or the folder;
    the default makes both."""
    fs = CountingFS()
    write_bytes(tmp_path / "a", b"one", fs=fs, durable=False)
    write_bytes(tmp_path / "b", b"two", fs=fs)
    assert ((tmp_path / "a").read_bytes(), ["file", tmp_path.name]) == (b"one", fs.syncs)


def test_discard_unlinks_without_a_folder_fsync(tmp_path: Path) -> None:
    """discard: the file goes, no fsync; False when it was not there."""
    fs = CountingFS()
    (tmp_path / "a").write_bytes(b"x")
    assert (True, False, False, []) == (discard(tmp_path / "a", fs=fs),
                                        discard(tmp_path / "a", fs=fs),
                                        (tmp_path / "a").exists(), fs.syncs)


def test_remove_many_is_durable_when_it_returns_with_one_fsync_of_the_folder(
        tmp_path: Path) -> None:
    """remove_many: every file gone for good once it returned, and a power cut before
    leaves a prefix of the removals undone (never a file half there); one folder fsync
    for all, after the unlinks."""
    from supervisor.state.atomic import remove_many

    def setup(root: str) -> None:
        for name in ("a", "b", "keep"):
            write_bytes(os.path.join(root, name), name.encode())

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        remove_many([os.path.join(root, "a"), os.path.join(root, "b"),
                     os.path.join(root, "gone")], fs=fs)
        yield

    def recover(root: str) -> Any:
        return sorted(os.listdir(root))

    report = explore(tmp_path, setup=setup, workload=workload, recover=recover,
                     expected=[["a", "b", "keep"], ["keep"]], partial={1: [["b", "keep"]]})
    assert ["fsync_dir"] == [op.split()[0] for op in report.ops if "unlink" not in op]
    assert "fsync_dir" in report.ops[-1]


def test_write_many_is_durable_when_it_returns_with_one_fsync_per_folder(
        tmp_path: Path) -> None:
    """write_many: each file written as write_bytes would (temp, fsync, rename), then ONE
    fsync per folder after all the renames; a power cut before that fsync leaves each
    file whole (old or new content, any mix of them), never torn."""
    from supervisor.state.atomic import write_many

    def setup(root: str) -> None:
        os.mkdir(os.path.join(root, "x"))
        os.mkdir(os.path.join(root, "y"))
        write_bytes(os.path.join(root, "x", "a"), b"old")

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        write_many([(os.path.join(root, "x", "a"), b"new"), (os.path.join(root, "x", "b"),
                     b"b"), (os.path.join(root, "y", "c"), b"c")], fs=fs)
        yield

    def recover(root: str) -> Any:
        return {f"{d}/{n}": open(os.path.join(root, d, n), "rb").read()
                for d in ("x", "y") for n in sorted(os.listdir(os.path.join(root, d)))
                if not is_tmp_name(n)}            # a temp file is the reaper's

    done = {"x/a": b"new", "x/b": b"b", "y/c": b"c"}
    mixes = [{k: v for k, v in {"x/a": a, "x/b": b, "y/c": c}.items() if v is not None}
             for a in (b"old", b"new") for b in (None, b"b") for c in (None, b"c")]
    report = explore(tmp_path, setup=setup, workload=workload, recover=recover,
                     expected=[{"x/a": b"old"}, done],
                     partial={1: [m for m in mixes if m not in ({"x/a": b"old"}, done)]})
    syncs = [op.split()[0] for op in report.ops if op.split()[0].startswith("fsync")]
    assert (["fsync"] * 3 + ["fsync_dir"] * 2) == syncs
    assert "fsync_dir" in report.ops[-1]


def test_read_file_reads_every_byte(tmp_path: Path) -> None:
    """OsFS.read_file: an empty file, a small one, one larger than a read; a folder
    raises IsADirectoryError (read_json reports it), a missing file FileNotFoundError."""
    fs = OsFS()
    big = os.urandom(200_000)
    for name, data in (("empty", b""), ("small", b"{}\n"), ("big", big)):
        (tmp_path / name).write_bytes(data)
    assert (b"", b"{}\n", big) == tuple(fs.read_file(str(tmp_path / n))
                                        for n in ("empty", "small", "big"))
    with pytest.raises(IsADirectoryError):
        fs.read_file(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fs.read_file(str(tmp_path / "none"))


def test_file_stamp_changes_with_every_atomic_rewrite(tmp_path: Path) -> None:
    """file_stamp: None for a missing file; a rewrite of the same bytes and size still
    changes it (a new inode is renamed over the file), so a cache keyed on it re-reads."""
    from supervisor.state.atomic import file_stamp, write_json
    path = tmp_path / "f.json"
    assert None is file_stamp(path)
    write_json(path, {"a": 1})
    first = file_stamp(path)
    write_json(path, {"a": 1})
    assert first is not None and first != file_stamp(path)
