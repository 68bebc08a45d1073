"""The output stream: UTF-8 held back at a split character, byte-offset ids, the end event
after the last byte, and inotify waking a follower as soon as the file grows."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from supervisor.api.inotify import Folders
from supervisor.api.stream import States, decode_prefix, follow, read_range, size_of
from supervisor.state.layout import Layout


def test_decode_prefix_holds_back_a_split_character() -> None:
    """'é' is two bytes: with only the first, nothing is used; with both, both are."""
    assert ("caf", 3) == decode_prefix("café".encode()[:4], final=False)
    assert ("café", 5) == decode_prefix("café".encode(), final=False)
    assert ("caf\ufffd", 4) == decode_prefix("café".encode()[:4], final=True)
    assert ("a\ufffdb", 3) == decode_prefix(b"a\xffb", final=False)


def test_read_range_and_size_of_a_missing_file(tmp_path: Path) -> None:
    """A job that has not written yet reads as empty."""
    assert (b"", 0) == (read_range(tmp_path / "none", 0, 10), size_of(tmp_path / "none"))
    (tmp_path / "f").write_bytes(b"0123456789")
    assert b"345" == read_range(tmp_path / "f", 3, 6)


def _events(raw: list[bytes]) -> list[tuple[str, str, object]]:
    out = []
    for chunk in raw:
        lines = dict(line.split(": ", 1) for line in chunk.decode().strip().split("\n")
                     if ": " in line and not line.startswith(":"))
        if "event" in lines:
            out.append((lines["id"], lines["event"], json.loads(lines["data"])))
    return out


def test_follow_streams_appends_as_they_come_and_ends_after_the_last_byte(
        tmp_path: Path) -> None:
    """A writer appends in pieces (a character split across two writes); the follower,
    woken by inotify, emits each complete piece with the offset after it, then `end`
    once the job is terminal, after every byte."""
    layout = Layout(tmp_path)
    out = layout.job_output("j")
    out.parent.mkdir(parents=True)
    state = {"j": "running"}
    pieces = [b"hello ", "é".encode()[:1], "é".encode()[1:] + b"\n", b"bye\n"]

    async def main() -> list[bytes]:
        folders = Folders()
        states = States(lambda ids: {i: state.get(i) for i in ids}, every=0.0)
        got: list[bytes] = []

        async def write() -> None:
            for p in pieces:
                await asyncio.sleep(0.05)
                with open(out, "ab") as f:
                    f.write(p)
            await asyncio.sleep(0.05)
            state["j"] = "completed"
            with open(out, "ab"):
                pass
            os.utime(out)

        task = asyncio.create_task(write())
        async for chunk in follow(layout, "j", 0, states=states, subscribe=folders.subscribe,
                                  unsubscribe=folders.unsubscribe, stopping=lambda: False):
            got.append(chunk)
        await task
        folders.close()
        return got

    events = _events(asyncio.run(asyncio.wait_for(main(), 20)))
    texts = [e[2] for e in events if e[1] == "output"]
    assert "hello é\nbye\n" == "".join(texts)
    assert all("\ufffd" not in t for t in texts)
    assert ("13", "end", {"state": "completed", "offset": 13}) == events[-1]
    assert [int(e[0]) for e in events] == sorted(int(e[0]) for e in events)


def test_follow_from_an_offset_repeats_nothing(tmp_path: Path) -> None:
    """Resuming at byte 6 of an ended job: only what follows, then `end`."""
    layout = Layout(tmp_path)
    out = layout.job_output("j")
    out.parent.mkdir(parents=True)
    out.write_bytes(b"hello world\n")

    async def main() -> list[bytes]:
        folders = Folders()
        states = States(lambda ids: dict.fromkeys(ids, "failed"))
        return [c async for c in follow(layout, "j", 6, states=states,
                                        subscribe=folders.subscribe,
                                        unsubscribe=folders.unsubscribe,
                                        stopping=lambda: False)]

    events = _events(asyncio.run(main()))
    assert [("12", "output", "world\n"), ("12", "end", {"state": "failed", "offset": 12})] == (
        events)


@pytest.mark.parametrize("exists", [True, False])
def test_folders_wake_a_subscriber_and_forget_it(tmp_path: Path, exists: bool) -> None:
    """A change in a watched folder sets the event; after unsubscribe the watch is gone;
    a folder that does not exist yet is simply not watched (the stream rescans)."""
    folder = tmp_path / "d"
    if exists:
        folder.mkdir()

    async def main() -> bool:
        folders = Folders()
        ev = asyncio.Event()
        folders.subscribe(folder, ev)
        if exists:
            (folder / "f").write_bytes(b"x")
            await asyncio.wait_for(ev.wait(), 5)
        folders.unsubscribe(folder, ev)
        woken = ev.is_set()
        folders.close()
        return woken

    assert exists == asyncio.run(main())
