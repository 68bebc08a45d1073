"""Tests of supervisor/_wal.py: framing, group commit, torn tails, corruption, epochs,
snapshots, read-only opens; all on the real disk (tmp_path)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.state.fs import OsFS
from supervisor.state.wal import (
    GROW,
    MORE,
    REC_MAGIC,
    SEG_HEADER,
    SNAPSHOT_NAME,
    Wal,
    WalError,
    WalFailed,
    frame,
    segment_name,
)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class ListLog:
    """A minimal owner: a list of strings; the snapshot image is the list as JSON."""

    def __init__(self, directory: Path, fs: OsFS | None = None, *, readonly: bool = False,
                 compact_records: int = 8192) -> None:
        self.wal = Wal.open(directory, fs=fs or OsFS(), readonly=readonly,
                            compact_records=compact_records)
        got = self.wal.take_recovered()
        self.report = got.report
        base = json.loads(bytes(got.snapshot)) if got.snapshot is not None else []
        self.items: list[str] = base + [r.decode() for r in got.records]
        self.compact()

    def append(self, *items: str) -> None:
        self.wal.append([i.encode() for i in items])
        self.items += items
        self.compact()

    def compact(self) -> None:
        if self.wal.compaction_due():
            epoch = self.wal.rotate()
            self.wal.install_snapshot(json.dumps(self.items).encode(), epoch)

    def close(self) -> None:
        self.wal.close()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def seg(root: Path, epoch: int = 1) -> Path:
    return root / segment_name(epoch)


def make_log(root: Path, items: list[str]) -> None:
    log = ListLog(root)
    for item in items:
        log.append(item)
    log.close()


def test_frame_layout() -> None:
    """Each record is magic, length, CRC32 of the payload, then the payload; every record
    of one write but the last has the MORE bit set in its length."""
    data = frame([b"hello", b"x"])
    magic, length, crc = struct.unpack_from("<4sII", data, 0)
    assert (REC_MAGIC, 5 | MORE, zlib.crc32(b"hello")) == (magic, length, crc)
    assert b"hello" == data[12:17]
    assert (REC_MAGIC, 1, zlib.crc32(b"x")) == struct.unpack_from("<4sII", data, 17)
    assert 30 == len(data)


def test_empty_payload_refused(tmp_path: Path) -> None:
    """An empty payload is refused (it could not be told from a zeroed tail)."""
    wal = Wal.open(tmp_path)
    with pytest.raises(WalError):
        wal.append([b""])
    wal.close()


def test_segment_header_carries_epoch(tmp_path: Path) -> None:
    """A new log starts segment 1 whose header names epoch 1."""
    make_log(tmp_path, ["a"])
    data = seg(tmp_path).read_bytes()
    magic, version, _flags, epoch, crc, _ = SEG_HEADER.unpack_from(data)
    assert (b"BATCHWAL", 1, 1, zlib.crc32(data[:24])) == (magic, version, epoch, crc)


def test_append_and_reopen(tmp_path: Path) -> None:
    """Appended records come back in order after a reopen, with a clean report."""
    make_log(tmp_path, ["a", "b", "c"])
    log = ListLog(tmp_path)
    assert ["a", "b", "c"] == log.items
    assert [] == log.report.errors
    assert 3 == log.report.records_replayed
    log.close()


class SlowCountingFS(OsFS):
    """Counts fdatasyncs and makes each take 5 ms, so that appends overlap a sync."""

    def __init__(self) -> None:
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        time.sleep(0.005)
        os.fdatasync(fd)


def test_group_commit_shares_fdatasyncs(tmp_path: Path) -> None:
    """N appends from concurrent threads cost far fewer than N fdatasyncs, all durable."""
    fs = SlowCountingFS()
    wal = Wal.open(tmp_path, fs=fs)
    start = fs.syncs
    threads, per = 16, 10
    barrier = threading.Barrier(threads)

    def worker(k: int) -> None:
        barrier.wait()
        for i in range(per):
            wal.append([f"{k}-{i}".encode()])

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    used = fs.syncs - start
    wal.close()
    assert used <= threads * per // 4, used
    got = Wal.open(tmp_path, readonly=True).take_recovered().records
    assert sorted(f"{k}-{i}".encode() for k in range(threads) for i in range(per)) == sorted(got)


def test_torn_tail_truncated_then_appends_continue(tmp_path: Path) -> None:
    """A cut final record is truncated at open; later appends follow the valid prefix."""
    make_log(tmp_path, ["a", "b"])
    whole = used(seg(tmp_path))
    torn = frame([b"never acknowledged"])[:15]
    seg(tmp_path).write_bytes(whole + torn)
    log = ListLog(tmp_path)
    assert ["a", "b"] == log.items
    assert 15 == log.report.torn_bytes_truncated
    assert [] == log.report.errors
    assert whole == seg(tmp_path).read_bytes()    # truncated to the last record
    log.append("c")
    log.close()
    assert ["a", "b", "c"] == ListLog(tmp_path).items


def _records_of(data: bytes, start: int) -> list[int]:
    """End offsets of each whole record in a segment image (zeros after them are free)."""
    ends, pos = [], start
    while pos + 12 <= len(data) and data[pos:pos + 4] == REC_MAGIC:
        (length,) = struct.unpack_from("<I", data, pos + 4)
        pos += 12 + (length & 0x7FFFFFFF)
        ends.append(pos)
    return ends


def used(path: Path) -> bytes:
    """A segment's bytes up to its last record (without the zeros of free space)."""
    data = path.read_bytes()
    return data[:_records_of(data, SEG_HEADER.size)[-1]]


def test_truncated_at_every_byte_recovers_a_prefix(tmp_path: Path) -> None:
    """A log cut at every byte offset recovers, silently, exactly the whole records."""
    items = ["first", "second record", "3", "fourth, a little longer"]
    src = tmp_path / "src"
    make_log(src, items)
    data = used(seg(src))
    ends = _records_of(data, SEG_HEADER.size)
    for cut in range(len(data) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment_name(1)).write_bytes(data[:cut])
        log = ListLog(d)
        expect = items[:sum(1 for e in ends if e <= cut)]
        assert expect == log.items, cut
        assert [] == log.report.errors, (cut, log.report.errors)
        log.append("after")
        log.close()
        assert [*expect, "after"] == ListLog(d).items, cut
        shutil.rmtree(d)


def test_a_write_is_atomic_at_every_cut(tmp_path: Path) -> None:
    """A multi-record write cut anywhere comes back whole or not at all."""
    src = tmp_path / "src"
    log = ListLog(src)
    log.append("solo")
    log.append("g1", "g2", "g3")
    log.append("last")
    log.close()
    data = used(seg(src))
    ends = _records_of(data, SEG_HEADER.size)     # solo, g1, g2, g3, last
    for cut in range(ends[0], len(data) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment_name(1)).write_bytes(data[:cut])
        got = ListLog(d)
        expect = (["solo"] if cut < ends[3] else ["solo", "g1", "g2", "g3"]
                  if cut < ends[4] else ["solo", "g1", "g2", "g3", "last"])
        assert expect == got.items, cut
        assert [] == got.report.errors, cut
        got.close()
        shutil.rmtree(d)


@SETTINGS
@given(garbage=st.binary(min_size=1, max_size=300), zeros=st.booleans())
def test_garbage_tail_recovers_everything_acknowledged(tmp_path: Path, garbage: bytes,
                                                       zeros: bool) -> None:
    """Garbage (or zeros) after the last record is a torn tail: truncated, nothing lost."""
    d = tmp_path / f"g{os.urandom(4).hex()}"
    make_log(d, ["a", "b", "c"])
    tail = bytes(len(garbage)) if zeros else garbage
    seg(d).write_bytes(used(seg(d)) + tail)
    log = ListLog(d)
    assert ["a", "b", "c"] == log.items
    assert [] == log.report.errors
    torn = 0 if not tail.strip(b"\0") else len(tail)      # zeros are free space
    assert torn == log.report.torn_bytes_truncated
    log.close()


def test_zeros_after_the_last_record_are_free_space(tmp_path: Path) -> None:
    """A segment grows in GROW steps of zeros; they are not a torn tail, nor lost."""
    make_log(tmp_path, ["a", "b"])
    assert GROW == seg(tmp_path).stat().st_size
    before = seg(tmp_path).read_bytes()
    log = ListLog(tmp_path)
    assert (["a", "b"], 0, []) == (log.items, log.report.torn_bytes_truncated,
                                   log.report.errors)
    assert before == seg(tmp_path).read_bytes()
    log.append("x" * GROW)                            # grows past the first step
    log.close()
    assert 0 == seg(tmp_path).stat().st_size % GROW
    assert ["a", "b", "x" * GROW] == ListLog(tmp_path).items


def test_mid_file_corruption_loses_only_the_damaged_record(tmp_path: Path) -> None:
    """A bad record followed by valid ones: only it is lost, the records before and after
    it are kept, the segment is quarantined and the loss is reported loudly."""
    make_log(tmp_path, ["aaaa", "bbbb", "cccc", "dddd"])
    data = bytearray(used(seg(tmp_path)))
    ends = _records_of(bytes(data), SEG_HEADER.size)
    data[ends[1] + 12] ^= 0xFF           # first payload byte of record 3 ("cccc")
    seg(tmp_path).write_bytes(bytes(data))
    log = ListLog(tmp_path)
    assert ["aaaa", "bbbb", "dddd"] == log.items
    assert 1 == len(log.report.errors)
    assert "corrupt" in log.report.errors[0]
    assert f"bytes {ends[1]}..{ends[2]}" in log.report.errors[0]
    assert [(segment_name(1), ends[1], ends[2])] == log.report.skipped
    assert (1, 0) == (log.report.groups_dropped, log.report.records_dropped)
    assert 1 == len(log.report.quarantined)
    moved = Path(log.report.quarantined[0])
    assert moved.name.startswith(segment_name(1) + ".corrupted.")
    assert bytes(data) == moved.read_bytes()
    log.append("eeee")
    log.close()
    again = ListLog(tmp_path)
    assert ["aaaa", "bbbb", "dddd", "eeee"] == again.items
    assert ([], [], []) == (again.report.errors, again.report.quarantined,
                            again.report.skipped)
    again.close()


GROUPS = [["a"], ["b1", "b2", "b3"], ["c"], ["d1", "d2"], ["e"], ["f"]]
FLAT = [(g, item) for g, items in enumerate(GROUPS) for item in items]
TOP_LENGTH_BYTE = 7                      # offset in a frame of the byte holding MORE


def _grouped_log(root: Path) -> tuple[bytes, list[int], list[int]]:
    """GROUPS appended one write each; (segment bytes in use, record starts, ends)."""
    log = ListLog(root)
    for group in GROUPS:
        log.append(*group)
    log.close()
    data = used(seg(root))
    ends = _records_of(data, SEG_HEADER.size)
    return data, [SEG_HEADER.size, *ends[:-1]], ends


def _flip_lost_groups(k: int, offset: int) -> tuple[list[int], int]:
    """The groups a flip at `offset` of record k must cost, and the groups_dropped figure
    (see _wal, "Damage"): with the top length byte hit, where the damaged record ends is
    unknown, so the records after it up to the next group end go too, counted apart."""
    g = FLAT[k][0]
    if offset != TOP_LENGTH_BYTE:
        return [g], 1
    ends_group = k + 1 == len(FLAT) or FLAT[k + 1][0] != g
    return ([g, g + 1] if ends_group else [g]), 2


@pytest.mark.parametrize("k", range(len(FLAT)))
def test_one_flipped_byte_in_record_k_loses_only_its_group(tmp_path: Path, k: int) -> None:
    """A byte flipped anywhere in record k (header or payload) loses k's group (an
    atomic write) and nothing else, in order, loudly, with the segment quarantined; a
    second recovery gives the same records with no error. The final record is the one
    exception: a damaged last record cannot be told from a torn write (truncated)."""
    data, starts, ends = _grouped_log(tmp_path / "src")
    for offset in range(ends[k] - starts[k]):
        d = tmp_path / f"o{offset}"
        d.mkdir()
        damaged = bytearray(data)
        damaged[starts[k] + offset] ^= 0xFF
        seg(d).write_bytes(bytes(damaged))
        log = ListLog(d)
        log.close()
        if k == len(FLAT) - 1:
            assert ([item for _, item in FLAT[:-1]], [], [], ends[k] - starts[k]) == (
                log.items, log.report.errors, log.report.quarantined,
                log.report.torn_bytes_truncated), offset
            continue
        lost, groups_dropped = _flip_lost_groups(k, offset)
        assert [item for g, item in FLAT if g not in lost] == log.items, offset
        assert 1 == len(log.report.errors), (offset, log.report.errors)
        assert [(segment_name(1), starts[k], ends[k])] == log.report.skipped, offset
        assert groups_dropped == log.report.groups_dropped, offset
        intact_lost = sum(1 for g, _ in FLAT if g in lost) - 1
        assert intact_lost == log.report.records_dropped, offset
        assert [f"{segment_name(1)}.corrupted."] == [
            os.path.basename(q)[:len(segment_name(1)) + 11] for q in log.report.quarantined]
        assert not seg(d).exists()
        again = ListLog(d)
        assert (log.items, [], []) == (again.items, again.report.errors,
                                       again.report.quarantined), offset
        again.close()
        shutil.rmtree(d)


def test_damage_spanning_two_records_loses_both_groups(tmp_path: Path) -> None:
    """Damage from the middle of one record into the next record's header loses both
    records' groups (the intact rest of the second group with them), nothing else."""
    data, starts, ends = _grouped_log(tmp_path / "src")
    c, d1 = 4, 5                                   # "c", then "d1" of ("d1", "d2")
    damaged = bytearray(data)
    for i in range(ends[c] - 1, starts[d1] + 4):   # c's last byte, d1's magic
        damaged[i] ^= 0x55
    seg(tmp_path).write_bytes(bytes(damaged))
    log = ListLog(tmp_path)
    assert ["a", "b1", "b2", "b3", "e", "f"] == log.items
    assert [(segment_name(1), starts[c], ends[d1])] == log.report.skipped
    assert (2, 1) == (log.report.groups_dropped, log.report.records_dropped)
    assert "2 damaged records" in log.report.errors[0]
    log.close()
    assert (log.items, []) == (ListLog(tmp_path).items, ListLog(tmp_path).report.errors)


def test_a_zeroed_block_over_two_records_loses_their_groups_only(tmp_path: Path) -> None:
    """Two records wiped to zeros (their lengths lost): the groups they were in are lost,
    the records after them kept; the skipped range is reported."""
    data, starts, ends = _grouped_log(tmp_path / "src")
    damaged = bytearray(data)
    damaged[starts[4]:ends[5]] = bytes(ends[5] - starts[4])      # "c" and "d1"
    seg(tmp_path).write_bytes(bytes(damaged))
    log = ListLog(tmp_path)
    assert ["a", "b1", "b2", "b3", "e", "f"] == log.items
    assert [(segment_name(1), starts[4], ends[5])] == log.report.skipped
    assert "record boundaries lost" in log.report.errors[0]
    log.close()
    again = ListLog(tmp_path)
    assert (log.items, []) == (again.items, again.report.errors)


def test_two_damaged_regions_in_one_segment(tmp_path: Path) -> None:
    """Each damaged region is skipped on its own; replay resumes after each one."""
    data, starts, ends = _grouped_log(tmp_path / "src")
    damaged = bytearray(data)
    damaged[starts[0] + 12] ^= 0xFF                  # "a"
    damaged[starts[4] + 1] ^= 0xFF                   # "c" (its magic)
    seg(tmp_path).write_bytes(bytes(damaged))
    log = ListLog(tmp_path)
    assert ["b1", "b2", "b3", "d1", "d2", "e", "f"] == log.items
    assert [(segment_name(1), starts[0], ends[0]),
            (segment_name(1), starts[4], ends[4])] == log.report.skipped
    assert (2, 0) == (log.report.groups_dropped, log.report.records_dropped)
    log.close()


def test_damaged_segment_header_keeps_the_records(tmp_path: Path) -> None:
    """A header that fails its CRC but names the right epoch: its 32 bytes are skipped,
    every record salvaged; loud and quarantined. A header whose epoch field is hit is
    rejected (it could be a file from elsewhere)."""
    make_log(tmp_path, ["a", "b"])
    good = seg(tmp_path).read_bytes()
    seg(tmp_path).write_bytes(good[:2] + b"X" + good[3:])        # the magic
    log = ListLog(tmp_path)
    assert ["a", "b"] == log.items
    assert [(segment_name(1), 0, SEG_HEADER.size)] == log.report.skipped
    assert (0, 0, 1) == (log.report.groups_dropped, log.report.records_dropped,
                         len(log.report.quarantined))
    log.close()
    assert (["a", "b"], []) == (ListLog(tmp_path).items, ListLog(tmp_path).report.errors)
    other = tmp_path / "other"
    make_log(other, ["a", "b"])
    seg(other).write_bytes(good[:16] + b"\x09" + good[17:])      # the epoch field
    log = ListLog(other)
    assert ([], 1) == (log.items, len(log.report.quarantined))
    assert any("rejected" in e for e in log.report.errors), log.report.errors


def test_readonly_open_of_a_damaged_log_sees_the_same_and_changes_nothing(
        tmp_path: Path) -> None:
    """batchctl's read-only open salvages the same records and reports the same loss,
    without quarantining or writing anything."""
    data, starts, _ends = _grouped_log(tmp_path / "src")
    damaged = bytearray(data)
    damaged[starts[2] + 13] ^= 0xFF                  # "b2"
    seg(tmp_path).write_bytes(bytes(damaged))
    before = tree(tmp_path)
    ro = ListLog(tmp_path, readonly=True)
    ro.close()
    assert before == tree(tmp_path)
    log = ListLog(tmp_path)
    assert (["a", "c", "d1", "d2", "e", "f"], 1) == (ro.items, len(ro.report.errors))
    assert (ro.items, ro.report.skipped) == (log.items, log.report.skipped)
    log.close()


def test_damage_in_a_segment_that_is_not_last_is_corruption(tmp_path: Path) -> None:
    """A torn-looking end of a segment followed by another segment is corruption."""
    log = ListLog(tmp_path)
    log.append("a", "b")
    log.wal.rotate()                      # segment 2 starts; no snapshot (crash here)
    log.append("c")
    log.close()
    seg(tmp_path, 1).write_bytes(used(seg(tmp_path, 1)) + b"\x01" * 7)
    again = ListLog(tmp_path)
    assert ["a", "b", "c"] == again.items
    assert again.report.errors
    assert any(".corrupted." in q for q in again.report.quarantined)
    again.close()


def _three_segments(root: Path) -> ListLog:
    """Segments 1, 2 and 3 with two records each, no snapshot (rotations whose
    compaction a crash cut)."""
    log = ListLog(root)
    log.append("a1")
    log.append("a2")
    log.wal.rotate()
    log.append("b1")
    log.append("b2")
    log.wal.rotate()
    log.append("c1")
    log.append("c2")
    log.close()
    return log


def test_record_damage_in_a_segment_that_is_not_last(tmp_path: Path) -> None:
    """A flipped byte in a middle segment loses that record only: the records after it
    in that segment and in the later segments are kept; then a clean reopen."""
    _three_segments(tmp_path)
    data = bytearray(seg(tmp_path, 2).read_bytes())
    first_end = _records_of(bytes(data), SEG_HEADER.size)[0]
    data[SEG_HEADER.size + 13] ^= 0xFF                     # "b1"'s payload
    seg(tmp_path, 2).write_bytes(bytes(data))
    log = ListLog(tmp_path)
    assert ["a1", "a2", "b2", "c1", "c2"] == log.items
    assert [(segment_name(2), SEG_HEADER.size, first_end)] == log.report.skipped
    assert 1 == len(log.report.errors)
    assert [segment_name(2)] == [os.path.basename(q).split(".corrupted.")[0]
                                 for q in log.report.quarantined]
    log.append("d")
    log.close()
    again = ListLog(tmp_path)
    assert (["a1", "a2", "b2", "c1", "c2", "d"], []) == (again.items, again.report.errors)
    again.close()


@pytest.mark.parametrize("junk", [b"", b"BATCH", bytes(SEG_HEADER.size)])
def test_short_segment_that_is_not_last_is_loud(tmp_path: Path, junk: bytes) -> None:
    """A 0-byte or short segment with a later one behind it cannot be a cut creation (a
    segment is complete before its successor exists): corruption, reported and
    quarantined, never dropped silently; the other segments replay."""
    _three_segments(tmp_path)
    seg(tmp_path, 2).write_bytes(junk)
    log = ListLog(tmp_path)
    assert ["a1", "a2", "c1", "c2"] == log.items
    assert 1 == len(log.report.errors)
    assert segment_name(2) in log.report.errors[0]
    assert "later segment exists" in log.report.errors[0]
    assert [(segment_name(2), 0, len(junk))] == log.report.skipped
    assert [segment_name(2)] == [os.path.basename(q).split(".corrupted.")[0]
                                 for q in log.report.quarantined]
    assert junk == Path(log.report.quarantined[0]).read_bytes()
    log.close()
    again = ListLog(tmp_path)
    assert (["a1", "a2", "c1", "c2"], [], []) == (again.items, again.report.errors,
                                                  again.report.quarantined)
    again.close()


def test_short_segment_behind_a_rejected_one_is_not_a_cut_creation(tmp_path: Path) -> None:
    """A later segment file, even one rejected for its header, proves the short one was
    complete once: it is loud corruption, not removed quietly."""
    make_log(tmp_path, ["a"])
    seg(tmp_path, 2).write_bytes(b"")
    shutil.copy(seg(tmp_path, 1), seg(tmp_path, 3))    # header says 1: rejected
    log = ListLog(tmp_path)
    assert ["a"] == log.items
    assert any(segment_name(2) in e and "later segment exists" in e
               for e in log.report.errors), log.report.errors
    log.close()


def test_short_segment_named_by_the_snapshot_is_loud(tmp_path: Path) -> None:
    """A snapshot is written only after its next segment's header was durable: that
    segment found empty is damage (its records are lost), reported and quarantined."""
    log = ListLog(tmp_path, compact_records=3)
    for i in range(5):                    # a snapshot after 3; "3", "4" in segment 2
        log.append(str(i))
    log.close()
    assert [segment_name(2)] == sorted(n for n in os.listdir(tmp_path) if n.endswith(".wal"))
    seg(tmp_path, 2).write_bytes(b"")
    again = ListLog(tmp_path, compact_records=3)
    assert ["0", "1", "2"] == again.items
    assert 1 == len(again.report.errors)
    assert "snapshot names it" in again.report.errors[0]
    assert 1 == len(again.report.quarantined)
    again.close()
    third = ListLog(tmp_path, compact_records=3)
    assert (["0", "1", "2"], []) == (third.items, third.report.errors)
    third.close()


def test_crash_between_rotate_and_snapshot_replays_both_segments(tmp_path: Path) -> None:
    """rotate() without the snapshot (a crash): old and new segments both replay."""
    log = ListLog(tmp_path)
    log.append("a", "b")
    log.wal.rotate()
    log.append("c")
    log.close()
    again = ListLog(tmp_path)
    assert ["a", "b", "c"] == again.items
    assert [] == again.report.errors
    assert [segment_name(1), segment_name(2)] == again.report.segments_replayed


def test_snapshot_plus_tail_replay(tmp_path: Path) -> None:
    """Past the threshold a snapshot is taken; recovery = snapshot + a short tail."""
    log = ListLog(tmp_path, compact_records=3)
    for i in range(10):
        log.append(str(i))
    log.close()
    names = sorted(os.listdir(tmp_path))
    assert SNAPSHOT_NAME in names
    assert 1 == sum(n.endswith(".wal") for n in names)
    again = ListLog(tmp_path, compact_records=3)
    assert [str(i) for i in range(10)] == again.items
    assert again.report.snapshot_loaded
    assert again.report.records_replayed < 3


def test_stale_segment_from_an_earlier_life_is_rejected(tmp_path: Path) -> None:
    """A segment older than the snapshot's epoch is never replayed and is removed."""
    log = ListLog(tmp_path, compact_records=1000)
    log.append("a", "b")
    old = seg(tmp_path).read_bytes()
    epoch = log.wal.rotate()
    log.wal.install_snapshot(json.dumps(log.items).encode(), epoch)
    log.append("c")
    log.close()
    seg(tmp_path, 1).write_bytes(old)      # e.g. a crash halfway through the deletions
    again = ListLog(tmp_path)
    assert ["a", "b", "c"] == again.items
    assert [str(seg(tmp_path, 1))] == again.report.stale_removed
    assert not seg(tmp_path, 1).exists()
    assert [] == again.report.errors


def test_segment_whose_header_disagrees_with_its_name_is_rejected(tmp_path: Path) -> None:
    """A header epoch that is not the name's epoch: not replayed, quarantined, loud."""
    make_log(tmp_path, ["a"])
    shutil.copy(seg(tmp_path, 1), seg(tmp_path, 2))   # header says 1, name says 2
    log = ListLog(tmp_path)
    assert ["a"] == log.items
    assert any("epoch" in e for e in log.report.errors), log.report.errors
    assert not seg(tmp_path, 2).exists()
    assert 1 == len(log.report.quarantined)
    log.close()


def test_corrupt_snapshot_quarantined_segments_replayed(tmp_path: Path) -> None:
    """A snapshot with a bad CRC is moved aside loudly; the segments still replay."""
    log = ListLog(tmp_path, compact_records=1000)
    log.append("a")
    epoch = log.wal.rotate()
    log.wal.install_snapshot(json.dumps(log.items).encode(), epoch)
    log.append("b")
    log.close()
    snap = tmp_path / SNAPSHOT_NAME
    data = bytearray(snap.read_bytes())
    data[-2] ^= 0x01
    snap.write_bytes(bytes(data))
    again = ListLog(tmp_path)
    assert ["b"] == again.items            # only what the snapshot held is lost
    assert any("CRC" in e for e in again.report.errors)
    assert [f"{SNAPSHOT_NAME}.corrupted."] == [
        os.path.basename(q)[:len(SNAPSHOT_NAME) + 11] for q in again.report.quarantined]
    again.close()
    third = ListLog(tmp_path)
    assert ["b"] == third.items
    assert [] == third.report.errors


def test_a_folder_in_place_of_a_segment_or_the_snapshot_is_moved_aside(tmp_path: Path) -> None:
    """Found by the chaos suite: a folder where a segment or the snapshot belongs made the
    log unreadable (IsADirectoryError; mmap's ENODEV for the snapshot), so the scheduler
    never started again and batchctl refused everything. Now each is a rejected file:
    moved aside loudly, the rest replayed, the next open clean."""
    log = ListLog(tmp_path, compact_records=1000)
    log.append("a")
    epoch = log.wal.rotate()
    log.wal.install_snapshot(json.dumps(log.items).encode(), epoch)
    log.append("b")
    epoch = log.wal.rotate()
    log.append("c")
    log.close()
    for path in (tmp_path / SNAPSHOT_NAME, seg(tmp_path, epoch - 1)):
        path.unlink()
        path.mkdir()
    readonly = ListLog(tmp_path, readonly=True)
    assert (["c"], 2, []) == (readonly.items, len(readonly.report.errors),
                              readonly.report.quarantined)
    readonly.close()
    again = ListLog(tmp_path)
    assert ["c"] == again.items           # the snapshot's and the segment's records are lost
    assert 2 == len(again.report.quarantined)
    again.close()
    third = ListLog(tmp_path)
    assert (["c"], []) == (third.items, third.report.errors)
    third.close()


def test_cut_segment_creation_removed_quietly(tmp_path: Path) -> None:
    """A last segment holding only a short or unsynced header is a cut creation."""
    make_log(tmp_path, ["a"])
    for junk in (b"BATCH", bytes(SEG_HEADER.size)):
        seg(tmp_path, 2).write_bytes(junk)
        log = ListLog(tmp_path)
        assert ["a"] == log.items
        assert [] == log.report.errors
        assert not seg(tmp_path, 2).exists()
        log.close()


def test_readonly_open_changes_nothing(tmp_path: Path) -> None:
    """Read-only sees the same records and leaves every byte and name as it was."""
    log = ListLog(tmp_path, compact_records=4)
    for i in range(6):
        log.append(str(i))
    log.close()
    seg(tmp_path, 2).write_bytes(used(seg(tmp_path, 2)) + b"\xfeREC torn")
    (tmp_path / ".tmp.snapshot.1.abcd").write_bytes(b"leftover")
    shutil.copy(seg(tmp_path, 2), seg(tmp_path, 1))   # a stale segment too
    before = tree(tmp_path)
    ro = ListLog(tmp_path, readonly=True)
    assert [str(i) for i in range(6)] == ro.items
    with pytest.raises(WalError):
        ro.wal.append([b"x"])
    ro.close()
    assert before == tree(tmp_path)


def test_readonly_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    """A read-only open of a log that does not exist yet is empty and creates nothing."""
    ro = ListLog(tmp_path / "nope", readonly=True)
    assert [] == ro.items
    assert not (tmp_path / "nope").exists()


class CompactingReaderFS(OsFS):
    """A reader's FS: right after its first listing, the writer compacts (a race)."""

    def __init__(self, writer: ListLog) -> None:
        self.writer = writer
        self.fired = False

    def listdir(self, path: str) -> list[str]:
        names = os.listdir(path)
        if not self.fired:
            self.fired = True
            self.writer.append("late")
            epoch = self.writer.wal.rotate()
            self.writer.wal.install_snapshot(json.dumps(self.writer.items).encode(), epoch)
        return names


def test_readonly_retries_when_a_compaction_races_it(tmp_path: Path) -> None:
    """A segment vanishing under a read-only open makes it read again, consistently."""
    writer = ListLog(tmp_path, compact_records=1000)
    writer.append("a", "b")
    ro = ListLog(tmp_path, CompactingReaderFS(writer), readonly=True)
    assert ["a", "b", "late"] == ro.items
    writer.close()


class FailingSyncFS(OsFS):
    def fdatasync(self, fd: int) -> None:
        raise OSError(5, "Input/output error")


def test_failed_fdatasync_poisons_the_log(tmp_path: Path) -> None:
    """After a failed fdatasync every append raises WalFailed (never a silent retry)."""
    make_log(tmp_path, ["a"])
    wal = Wal.open(tmp_path, fs=FailingSyncFS())
    with pytest.raises(OSError):
        wal.append([b"b"])
    with pytest.raises(WalFailed):
        wal.append([b"c"])
    wal.close()


class HalfWriteFS(OsFS):
    """pwrite writes half the bytes, then fails (a full disk), once."""

    def __init__(self) -> None:
        self.armed = False

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if self.armed:
            self.armed = False
            os.pwrite(fd, data[:len(data) // 2], offset)
            raise OSError(28, "No space left on device")
        super().pwrite(fd, data, offset)


def test_failed_write_is_undone(tmp_path: Path) -> None:
    """A write that fails halfway is truncated away; the next append follows cleanly."""
    fs = HalfWriteFS()
    log = ListLog(tmp_path, fs)
    log.append("a")
    fs.armed = True
    with pytest.raises(OSError):
        log.wal.append([b"lost"])
    log.append("b")
    log.close()
    again = ListLog(tmp_path)
    assert ["a", "b"] == again.items
    assert [] == again.report.errors


class _SnapshotFailsOnce(OsFS):
    """The real disk, but the next snapshot write fails (ENOSPC) once."""

    def __init__(self) -> None:
        self.fail_next = False

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self.fail_next and ".tmp.snapshot" in os.path.basename(path):
            self.fail_next = False
            raise OSError(28, "No space left on device")
        return super().open(path, flags, mode)


def test_a_failed_snapshot_leaves_compaction_due(tmp_path: Path) -> None:
    """rotate() reset the tail counters; a snapshot that then fails must not postpone the
    next compaction by a whole threshold: it is due again at once, and then succeeds."""
    fs = _SnapshotFailsOnce()
    wal = Wal.open(tmp_path / "wal", fs=fs, compact_records=2)
    wal.take_recovered()
    wal.append([b"a", b"b"])
    assert wal.compaction_due()
    epoch = wal.rotate()
    fs.fail_next = True
    with pytest.raises(OSError):
        wal.install_snapshot(b"image", epoch)
    assert wal.compaction_due()
    wal.install_snapshot(b"image", wal.rotate())
    assert not wal.compaction_due()
    wal.close()
