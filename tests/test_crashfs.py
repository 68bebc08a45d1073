"""Tests of the power-cut simulator itself (tests/crashfs.py): the model must really lose
what a power cut may lose, and `explore` must really catch writers that are not safe."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.crashfs import CrashFS, CrashNow, CrashState, Exploration, explore, snapshot_tree

W = os.O_WRONLY
NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def states_after(root: Path, ops: Callable[[CrashFS, str], None]) -> list[CrashState]:
    """Run `ops` to the end through a CrashFS on `root`; every state a power cut then allows."""
    fs = CrashFS(root)
    ops(fs, str(root))
    fs.release()
    fs.check_model()
    return list(fs.crash_states())


def contents(states: list[CrashState], rel: str) -> set[bytes | None]:
    """What `rel` holds across the states (None: it does not exist)."""
    return {s.files.get(rel) for s in states}


def write_file(fs: CrashFS, path: str, data: bytes, flags: int = NEW,
               sync: bool = True) -> None:
    fd = fs.open(path, flags)
    fs.write(fd, data)
    if sync:
        fs.fsync(fd)
    fs.close(fd)


def test_write_without_fsync_is_lost_in_the_worst_state(tmp_path: Path) -> None:
    """Unsynced data may be dropped, half written, garbage, zeros, or all there."""
    (tmp_path / "f").write_bytes(b"")

    def ops(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/f", b"hello", W, sync=False)

    got = contents(states_after(tmp_path, ops), "f")
    assert {b"", b"he", b"\0" * 5, b"hello"} < got
    assert len(got) == 5
    garbage = (got - {b"", b"he", b"\0" * 5, b"hello"}).pop()
    assert len(garbage) == 5


def test_fsync_makes_data_durable(tmp_path: Path) -> None:
    """After fsync the data survives every power cut."""
    (tmp_path / "f").write_bytes(b"")

    def ops(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/f", b"hello", W)

    assert {b"hello"} == contents(states_after(tmp_path, ops), "f")


def test_unsynced_append_keeps_the_synced_part(tmp_path: Path) -> None:
    """O_APPEND writes are modelled at the end of the file; the synced prefix always holds."""
    (tmp_path / "log").write_bytes(b"")

    def ops(fs: CrashFS, root: str) -> None:
        fd = fs.open(f"{root}/log", os.O_WRONLY | os.O_APPEND)
        fs.write(fd, b"abc")
        fs.fsync(fd)
        fs.write(fd, b"def")
        fs.close(fd)

    got = contents(states_after(tmp_path, ops), "log")
    assert {b"abc", b"abcd", b"abc\0\0\0", b"abcdef"} < got
    assert all(c is not None and c.startswith(b"abc") for c in got)


def test_pwrite_and_ftruncate_are_modelled(tmp_path: Path) -> None:
    """An unsynced pwrite and ftruncate may both be lost; synced ones hold."""
    (tmp_path / "f").write_bytes(b"abcdef")

    def ops(fs: CrashFS, root: str) -> None:
        fd = fs.open(f"{root}/f", os.O_RDWR)
        fs.pwrite(fd, b"XY", 1)
        fs.fdatasync(fd)
        fs.ftruncate(fd, 3)
        fs.close(fd)

    got = contents(states_after(tmp_path, ops), "f")
    assert {b"aXYdef", b"aXY"} == got


def test_rename_without_fsync_dir_reverts(tmp_path: Path) -> None:
    """A rename not followed by fsync_dir may revert: old name back, old target back."""
    (tmp_path / "a").write_bytes(b"old")

    def ops(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/tmp", b"new")
        fs.fsync_dir(root)
        fs.rename(f"{root}/tmp", f"{root}/a")

    got = {tuple(sorted(s.files.items())) for s in states_after(tmp_path, ops)}
    assert {(("a", b"old"), ("tmp", b"new")), (("a", b"new"),)} == got


def test_rename_followed_by_fsync_dir_holds(tmp_path: Path) -> None:
    """After fsync_dir the rename survives every power cut."""
    (tmp_path / "a").write_bytes(b"old")

    def ops(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/tmp", b"new")
        fs.rename(f"{root}/tmp", f"{root}/a")
        fs.fsync_dir(root)

    got = {tuple(sorted(s.files.items())) for s in states_after(tmp_path, ops)}
    assert {(("a", b"new"),)} == got


def test_created_file_without_fsync_dir_may_vanish(tmp_path: Path) -> None:
    """fsync of a new file does not make its name durable; fsync_dir does."""
    def ops(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/f", b"data")

    assert {None, b"data"} == contents(states_after(tmp_path, ops), "f")

    def ops_synced(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/g", b"data")
        fs.fsync_dir(root)

    assert {b"data"} == contents(states_after(tmp_path, ops_synced), "g")


def test_unlink_without_fsync_dir_comes_back(tmp_path: Path) -> None:
    """An unlinked file reappears, with its content, unless the folder was fsynced."""
    (tmp_path / "f").write_bytes(b"x")

    def ops(fs: CrashFS, root: str) -> None:
        fs.unlink(f"{root}/f")

    assert {None, b"x"} == contents(states_after(tmp_path, ops), "f")


def test_unsynced_mkdir_loses_the_folder_and_what_it_holds(tmp_path: Path) -> None:
    """A durable file in a folder whose own entry is not durable is lost with the folder."""
    def ops(fs: CrashFS, root: str) -> None:
        fs.mkdir(f"{root}/d")
        write_file(fs, f"{root}/d/f", b"data")
        fs.fsync_dir(f"{root}/d")

    states = states_after(tmp_path, ops)
    assert {(frozenset(), None), (frozenset({"d"}), b"data")} == {
        (s.dirs, s.files.get("d/f")) for s in states}


def test_pending_folder_changes_survive_as_an_ordered_prefix(tmp_path: Path) -> None:
    """Unsynced creates persist in order: b never exists without a."""
    def ops(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/a", b"1")
        write_file(fs, f"{root}/b", b"2")

    got = {tuple(sorted(s.files)) for s in states_after(tmp_path, ops)}
    assert {(), ("a",), ("a", "b")} == got


def test_crash_at_k_stops_before_op_k_and_the_machine_stays_down(tmp_path: Path) -> None:
    """crash_at=1 lets op 0 happen, raises instead of op 1, and every later call raises too."""
    fs = CrashFS(tmp_path, crash_at=1)
    fd = fs.open(f"{tmp_path}/f", NEW)
    with pytest.raises(CrashNow):
        fs.write(fd, b"data")
    assert (tmp_path / "f").read_bytes() == b""
    with pytest.raises(CrashNow):
        fs.exists(f"{tmp_path}/f")
    with pytest.raises(CrashNow):
        fs.close(fd)
    assert not issubclass(CrashNow, Exception)
    assert fs.points == 1
    fs.release()


def test_materialize_writes_exactly_the_state(tmp_path: Path) -> None:
    """A crash state written to disk reads back as the same files and folders."""
    state = CrashState(0, 0, 0, (), {"a": b"1", "d/e/f": b"\0x"}, frozenset({"d", "d/e"}))
    state.materialize(tmp_path / "s")
    assert ({"a": b"1", "d/e/f": b"\0x"}, {"d", "d/e"}) == snapshot_tree(tmp_path / "s")


def test_check_model_catches_a_write_that_bypasses_the_seam(tmp_path: Path) -> None:
    """A file written with plain open() instead of through the FS makes the run fail."""
    fs = CrashFS(tmp_path)
    write_file(fs, f"{tmp_path}/ok", b"1")
    (tmp_path / "sneaky").write_text("x")
    with pytest.raises(AssertionError, match="bypassed"):
        fs.check_model()
    fs.check_model(ignore=lambda rel: rel == "sneaky")


def test_mutations_outside_the_root_are_refused(tmp_path: Path) -> None:
    """The workload may not persist outside its folder (the model would miss it)."""
    (tmp_path / "root").mkdir()
    fs = CrashFS(tmp_path / "root")
    with pytest.raises(AssertionError, match="outside"):
        fs.mkdir(f"{tmp_path}/elsewhere")


# -- explore: it must catch unsafe writers ------------------------------------------------------
def _setup(root: str) -> None:
    Path(root, "f").write_bytes(b"old")


def _recover(root: str) -> bytes | None:
    p = Path(root, "f")
    return p.read_bytes() if p.exists() else None


def _explore(tmp_path: Path, writer: Callable[[CrashFS, str], None]) -> Exploration:
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        writer(fs, root)
        yield

    return explore(tmp_path, setup=_setup, workload=workload, recover=_recover,
                   expected=[b"old", b"new"])


def _safe(fs: CrashFS, root: str) -> None:
    write_file(fs, f"{root}/t", b"new")
    fs.rename(f"{root}/t", f"{root}/f")
    fs.fsync_dir(root)


def test_explore_accepts_a_safe_writer(tmp_path: Path) -> None:
    """tmp + fsync + rename + fsync_dir passes: 5 points, both prefixes reached."""
    report = _explore(tmp_path, _safe)
    assert report.points == 5
    assert {0, 1} == set(report.recovered_to)


def test_explore_catches_an_in_place_writer(tmp_path: Path) -> None:
    """Overwriting in place (O_TRUNC, write, fsync) can leave a half-written file."""
    def in_place(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/f", b"new", os.O_WRONLY | os.O_TRUNC)

    with pytest.raises(AssertionError, match="not an acknowledged prefix"):
        _explore(tmp_path, in_place)


def test_explore_catches_a_rename_of_unsynced_data(tmp_path: Path) -> None:
    """Renaming a temp file whose data was never fsynced can leave garbage under the name."""
    def no_fsync(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/t", b"new", sync=False)
        fs.rename(f"{root}/t", f"{root}/f")
        fs.fsync_dir(root)

    with pytest.raises(AssertionError, match="not an acknowledged prefix"):
        _explore(tmp_path, no_fsync)


def test_explore_catches_a_missing_fsync_dir(tmp_path: Path) -> None:
    """Without fsync_dir an acknowledged rename may revert after the call returned."""
    def no_dir_sync(fs: CrashFS, root: str) -> None:
        write_file(fs, f"{root}/t", b"new")
        fs.rename(f"{root}/t", f"{root}/f")

    with pytest.raises(AssertionError, match=r"1 acknowledged"):
        _explore(tmp_path, no_dir_sync)


def test_explore_reports_a_recovery_that_raises(tmp_path: Path) -> None:
    """An exception out of recovery fails the exploration, naming the crash state."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        _safe(fs, root)
        yield

    def bad(root: str) -> bytes:
        raise ValueError("boom")

    with pytest.raises(AssertionError, match=r"(?s)recovery raised ValueError.*power cut at"):
        explore(tmp_path, setup=_setup, workload=workload, recover=bad,
                expected=[b"old", b"new"])


def test_explore_catches_a_recovery_that_is_not_idempotent(tmp_path: Path) -> None:
    """Recovering twice must give the same answer."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        _safe(fs, root)
        yield

    def drifting(root: str) -> bytes | None:
        got = _recover(root)
        Path(root, "f").write_bytes(b"new")
        return got

    with pytest.raises(AssertionError, match="not idempotent"):
        explore(tmp_path, setup=_setup, workload=workload, recover=drifting,
                expected=[b"old", b"new"])


def test_explore_refuses_a_workload_that_swallows_the_crash(tmp_path: Path) -> None:
    """A workload that catches CrashNow and goes on would fake acknowledgements."""
    def swallowing(root: str, fs: CrashFS) -> Iterator[None]:
        try:
            _safe(fs, root)
        except BaseException as exc:  # noqa: BLE001 - the point of the test
            assert isinstance(exc, CrashNow)
        yield

    with pytest.raises(AssertionError, match="swallowed"):
        explore(tmp_path, setup=_setup, workload=swallowing, recover=_recover,
                expected=[b"old", b"new"])


def test_explore_refuses_the_effect_of_an_operation_not_yet_started(tmp_path: Path) -> None:
    """Only acknowledged operations and the one in flight may show; a later one may not."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        _safe(fs, root)
        yield
        _safe(fs, root)
        yield

    with pytest.raises(AssertionError, match=r"0 acknowledged, allowed prefixes \[0, 1\]"):
        explore(tmp_path, setup=_setup, workload=workload, recover=lambda root: "future",
                expected=[b"old", b"new", "future"])
