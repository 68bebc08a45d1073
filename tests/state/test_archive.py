"""state.archive: monthly gzip files of forgotten jobs, appended whole, read newest first."""

from __future__ import annotations

import gzip
from pathlib import Path

from supervisor.state import archive
from supervisor.state.layout import Layout


def _rec(job_id: str, finished: str | None, created: str = "2026-01-01T00:00:00.000Z") -> dict:
    return {"id": job_id, "state": "completed", "finished_at": finished, "created_at": created}


def test_records_go_to_their_finish_month_and_read_back_newest_first(tmp_path: Path) -> None:
    """Each record lands in the file of the month it finished (else was created); read()
    gives every month's records newest first; months() lists the files newest first; the
    files are ordinary gzip (zcat reads them)."""
    layout = Layout(tmp_path)
    archive.append(layout, [_rec("a", "2026-10-31T23:59:59.000Z"),
                            _rec("b", "2026-11-02T08:00:00.000Z"),
                            _rec("c", None, created="2026-09-15T00:00:00.000Z")])
    archive.append(layout, [_rec("d", "2026-11-20T08:00:00.000Z")])
    records, notes = archive.read(layout)
    assert (["d", "b", "a", "c"], []) == ([r["id"] for r in records], notes)
    assert ["2026-11", "2026-10", "2026-09"] == archive.months(layout)
    assert (["d", "b"], 2) == ([r["id"] for r in archive.read(layout, "2026-11")[0]],
                               gzip.decompress(layout.history_file("2026-11").read_bytes())
                               .count(b"\n"))


def test_a_torn_append_is_skipped_with_a_note_and_truncate_undoes_it(tmp_path: Path) -> None:
    """A crash half-way through an append leaves the earlier members readable (the torn
    one is named with its offset); truncate() back to the size before, then the append
    again: every record exactly once."""
    layout = Layout(tmp_path)
    archive.append(layout, [_rec("a", "2026-11-01T00:00:00.000Z")])
    before = archive.sizes(layout, [_rec("b", "2026-11-02T00:00:00.000Z")])
    path = layout.history_file("2026-11")
    whole = path.read_bytes()
    archive.append(layout, [_rec("b", "2026-11-02T00:00:00.000Z")])
    member = path.read_bytes()[len(whole):]
    path.write_bytes(whole + member[: len(member) // 2])
    records, notes = archive.read(layout)
    assert (["a"], [f"2026-11.jsonl.gz: an unfinished append at byte {len(whole)}; the rest "
                    "of the file is skipped"]) == ([r["id"] for r in records], notes)
    assert {"2026-11": len(whole)} == before
    archive.truncate(layout, before)
    archive.truncate(layout, before)                 # idempotent
    archive.append(layout, [_rec("b", "2026-11-02T00:00:00.000Z")])
    assert (["b", "a"], []) == ([r["id"] for r in archive.read(layout)[0]],
                                archive.read(layout)[1])


def test_damaged_bytes_and_bad_lines_are_named_not_fatal(tmp_path: Path) -> None:
    """Garbage after a good member, or a line that is not a JSON object: the note names
    the file and where; what can be read is read."""
    layout = Layout(tmp_path)
    archive.append(layout, [_rec("a", "2026-11-01T00:00:00.000Z")])
    path = layout.history_file("2026-11")
    good = path.read_bytes()
    path.write_bytes(good + gzip.compress(b'[1]\n{"id": "x"}\n', mtime=0) + b"\x1f\x8bJUNKJUNK")
    records, notes = archive.read(layout, "2026-11")
    assert ["x", "a"] == sorted((r["id"] for r in records), reverse=True)
    assert [f"2026-11.jsonl.gz: member at byte {len(good)}, line 1: not a JSON object; "
            "skipped", True] == [notes[0], notes[1].startswith("2026-11.jsonl.gz: damaged data")]


def test_nothing_archived_reads_as_empty(tmp_path: Path) -> None:
    """No history folder: no months, no records, no notes; an empty append writes nothing."""
    layout = Layout(tmp_path)
    assert (0, [], ([], [])) == (archive.append(layout, []), archive.months(layout),
                                 archive.read(layout))
    assert not layout.history_dir.exists()


def test_a_folder_in_place_of_a_month_file_is_moved_aside_by_the_next_append(
        tmp_path: Path) -> None:
    """Found by the chaos suite: a folder where history/YYYY-MM.jsonl.gz belongs failed
    every archiving (Is a directory), so retention never went on and `batchctl clean`
    waited for a reply that never came. history names it and reads the rest; sizes()
    counts it as no file; the next append moves it aside and starts the file afresh."""
    layout = Layout(tmp_path)
    archive.append(layout, [_rec("a", "2026-10-01T00:00:00.000Z")])
    path = layout.history_file("2026-11")
    path.mkdir()
    records, notes = archive.read(layout)
    assert (["a"], ["2026-11.jsonl.gz: a folder, not an archive file; skipped (the reaper "
                    "moves it aside at its next archiving)"]) == ([r["id"] for r in records],
                                                                 notes)
    assert {"2026-11": 0} == archive.sizes(layout, [_rec("b", "2026-11-02T00:00:00.000Z")])
    archive.truncate(layout, {"2026-11": 0})
    archive.append(layout, [_rec("b", "2026-11-02T00:00:00.000Z")])
    assert (["b", "a"], []) == ([r["id"] for r in archive.read(layout)[0]],
                                archive.read(layout)[1])
    assert 1 == len(list(layout.history_dir.glob("2026-11.jsonl.gz.corrupted.*")))
