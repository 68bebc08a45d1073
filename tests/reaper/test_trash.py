"""reaper.trash: a folder is renamed to its trash name before it is deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from supervisor.reaper import trash
from tests.helpers import until


def _tree(root: Path, files: int) -> Path:
    for i in range(files):
        d = root / f"d{i % 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"x" * 10)
    return root


def test_discard_removes_a_folder_and_says_whether_it_was_there(tmp_path: Path) -> None:
    """discard: True and gone; a second time False; a leftover trash of the same name is
    cleared first; finish() deletes what a crash left."""
    ws = _tree(tmp_path / "ws" / "j1", 30)
    leftover = _tree(tmp_path / "ws" / ".reap.j1", 5)
    assert (True, False, False, False) == (trash.discard(ws), ws.exists(), leftover.exists(),
                                           trash.discard(ws))
    other = _tree(tmp_path / "ws" / ".reap.j2", 5)
    assert ([str(other)], []) == (trash.finish(tmp_path / "ws"), os.listdir(tmp_path / "ws"))
    assert [] == trash.finish(tmp_path / "nowhere")


def test_a_removal_sigkilled_halfway_leaves_only_trash_that_finish_removes(
        tmp_path: Path) -> None:
    """SIGKILL a process in the middle of deleting a big folder: the folder is gone from
    its real name at once (only `.reap.<name>` is left, partly deleted), and the next
    pass's finish() removes the rest."""
    ws = _tree(tmp_path / "ws" / "big", 8000)
    code = ("import sys\nfrom pathlib import Path\nfrom supervisor.reaper import trash\n"
            "trash.discard(Path(sys.argv[1]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws)])
    junk = tmp_path / "ws" / ".reap.big"
    until("the rename", junk.exists, interval=0.001)
    time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sum(len(files) for _, _, files in os.walk(junk))
    assert (False, True) == (ws.exists(), 0 < left < 8000)
    assert [str(junk)] == trash.finish(tmp_path / "ws")
    assert [] == os.listdir(tmp_path / "ws")


def test_discard_many_renames_all_before_deleting_any(tmp_path: Path) -> None:
    """discard_many: every path that was there is gone (the list says which), a missing
    one is skipped, a leftover trash of the same name is cleared first; across two
    parent folders."""
    ws = [_tree(tmp_path / "ws" / f"j{i}", 5) for i in range(3)]
    jobs = [_tree(tmp_path / "jobs" / f"j{i}", 3) for i in range(2)]
    _tree(tmp_path / "ws" / ".reap.j1", 2)
    missing = tmp_path / "ws" / "nope"
    assert [*ws, *jobs] == trash.discard_many([*ws, missing, *jobs])
    assert ([], []) == (os.listdir(tmp_path / "ws"), os.listdir(tmp_path / "jobs"))
    assert [] == trash.discard_many([missing])
