"""`batchctl submit` (ctl.submit): flags and files through the door, exit codes, no half-write."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, DiskConfig, FreeSpace, RepoConfig
from supervisor.ctl import build_parser
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.ctl.submit import cmd_submit
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import parse_iso
from supervisor.state.jobs import submit_request
from supervisor.state.layout import REQUEST, Layout, read_record, write_record
from supervisor.state.queue import JobQueue
from supervisor.state.submission import (
    Checker,
    JobError,
    Known,
)

KNOWN = Known(agents=frozenset({"shell", "claude"}), repos=frozenset({"app", "lib"}),
              ids=frozenset({"taken"}))


def _ctx(tmp_path: Path) -> Ctx:
    state = tmp_path / "state"
    cfg = Config(state_dir=state, workspace_dir=state / "ws",
                 repositories={"app": RepoConfig(url="/srv/git/app.git")})
    return Ctx(cfg=cfg, layout=Layout(state), out=io.StringIO(), err=io.StringIO())


def _inbox(ctx: Ctx) -> list[str]:
    folder = ctx.layout.inbox("scheduler")
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _requests(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for name in _inbox(ctx):
        rec = read_record(REQUEST, ctx.layout.inbox("scheduler") / name, owner=False)
        assert isinstance(rec, dict)
        out.append(rec)
    return out


def _submit(ctx: Ctx, *argv: str) -> int:
    args = build_parser().parse_args(["submit", *argv])
    return cmd_submit(ctx, args)


def _bad(obj: object) -> str:
    with pytest.raises(JobError) as info:
        Checker(KNOWN).check(obj)
    return str(info.value)


def test_cmd_submit_single_prints_id_and_records_every_field(tmp_path: Path) -> None:
    """One submit: its id on stdout, one request with the full job dict."""
    ctx = _ctx(tmp_path)
    code = _submit(ctx, "--agent", "shell", "--prompt", "echo hi", "--repo", "app",
                   "--callback", "https://h.example/cb", "--timeout", "90", "--batch", "b",
                   "--id", "j1", "--exclusive")
    assert (EXIT_OK, "j1\n") == (code, ctx.out.getvalue())  # type: ignore[attr-defined]
    [req] = _requests(ctx)
    [job] = req["jobs"]
    job.pop("created_at")
    assert {"id": "j1", "agent": "shell", "prompt": "echo hi", "repos": ["app"],
            "callback": "https://h.example/cb", "timeout": 90.0, "batch": "b",
            "exclusive": True, "idle_timeout": None} == job


def test_cmd_submit_prompt_file_dash_reads_stdin(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--prompt-file - takes the prompt from standard input."""
    ctx = _ctx(tmp_path)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"echo from stdin\n")))
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt-file", "-", "--id", "s1")
    assert "echo from stdin\n" == _requests(ctx)[0]["jobs"][0]["prompt"]


@pytest.mark.parametrize("argv", [
    ("--agent", "cluade", "--prompt", "x"),
    ("--agent", "shell"),
    ("--prompt", "x"),
    ("--agent", "shell", "--prompt", ""),
    ("--agent", "shell", "--prompt", "x", "--repo", "nope"),
    ("--agent", "shell", "--prompt", "x", "--callback", "file:///etc/passwd"),
    ("--agent", "shell", "--prompt", "x", "--timeout", "soon"),
    ("--agent", "shell", "--prompt", "x", "--id", "../etc"),
    ("--agent", "shell", "--prompt-file", "/nonexistent/prompt"),
    ("--from", "/nonexistent/jobs.jsonl"),
    ("--prompt", "x", "--resume", "ghost"),
    ("--agent", "shell", "--prompt", "x", "--idle-timeout", "0"),
    ("--agent", "aider", "--prompt", "x"),
    ("--from", "/dev/null", "--resume", "first"),
])
def test_cmd_submit_refuses_without_writing(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """A refused submit exits 2 and leaves the inbox exactly as it was."""
    ctx = _ctx(tmp_path)
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "first")
    before = _inbox(ctx)
    with pytest.raises(CtlError) as info:
        _submit(ctx, *argv)
    assert (EXIT_USAGE, before) == (info.value.code, _inbox(ctx))


def test_cmd_submit_resume_takes_the_jobs_agent_session_and_workspace(tmp_path: Path) -> None:
    """--resume J (no --agent): the new job continues J's session in J's workspace;
    --idle-timeout is kept in seconds."""
    ctx = _ctx(tmp_path)
    ws = tmp_path / "ws-j"
    ws.mkdir()
    ensure_dir(ctx.layout.wal_dir)
    with JobQueue.open(ctx.layout.wal_dir) as q:
        q.enqueue("j", {"agent": "claude", "prompt": "p", "repos": [], "workspace": str(ws)})
        q.update("j", state="failed", session_id="s-7")
    assert EXIT_OK == _submit(ctx, "--resume", "j", "--prompt", "go on", "--id", "k",
                              "--idle-timeout", "90s")
    [job] = _requests(ctx)[0]["jobs"]
    assert ("k", "claude", "j", "s-7", str(ws), 90.0) == (
        job["id"], job["agent"], job["resume_of"], job["resume_session"], job["workspace"],
        job["idle_timeout"])


def test_cmd_submit_refuses_id_pending_in_the_inbox(tmp_path: Path) -> None:
    """An id waiting in the scheduler's inbox is in use (batchd down or not)."""
    ctx = _ctx(tmp_path)
    _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "dup")
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--agent", "shell", "--prompt", "y", "--id", "dup")
    assert "job id 'dup' is already in use" == str(info.value)


def test_cmd_submit_from_is_all_or_nothing(tmp_path: Path) -> None:
    """One bad line among good ones queues none of them."""
    ctx = _ctx(tmp_path)
    jobs = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"agent": "shell", "prompt": f"echo {i}"}) for i in range(6)]
    lines.append(json.dumps({"agent": "cluade", "prompt": "x"}))
    jobs.write_text("\n".join(lines) + "\n")
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--from", str(jobs))
    assert (f"{jobs}:7: unknown agent 'cluade'", []) == (str(info.value), _inbox(ctx))


def test_cmd_submit_from_prints_ids_in_file_order_as_json(tmp_path: Path) -> None:
    """--json prints one array of the ids, in file order, all in one request."""
    ctx = Ctx(cfg=_ctx(tmp_path).cfg, layout=_ctx(tmp_path).layout, json=True,
              out=io.StringIO(), err=io.StringIO())
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"agent":"shell","prompt":"a","id":"z"}\n{"agent":"shell","prompt":"b"}\n'
                    '{"agent":"shell","prompt":"c","id":"a"}\n')
    assert EXIT_OK == _submit(ctx, "--from", str(jobs))
    ids = json.loads(ctx.out.getvalue())  # type: ignore[attr-defined]
    [req] = _requests(ctx)
    assert (3, "z", "a", ids) == (len(ids), ids[0], ids[2], [j["id"] for j in req["jobs"]])


def test_cmd_submit_from_refuses_extra_flags(tmp_path: Path) -> None:
    """--from cannot be mixed with per-job flags (usage error)."""
    ctx = _ctx(tmp_path)
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--from", "x.jsonl", "--agent", "shell")
    assert (EXIT_USAGE, "submit --from cannot be combined with --agent") == (
        info.value.code, str(info.value))


def test_cmd_submit_from_empty_file_submits_nothing(tmp_path: Path) -> None:
    """A file of blank lines writes nothing and says so."""
    ctx = _ctx(tmp_path)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    assert (EXIT_OK, []) == (_submit(ctx, "--from", str(empty)), _inbox(ctx))


def test_cmd_submit_refuses_id_of_a_pending_submit_request(tmp_path: Path) -> None:
    """Ids inside a submit request written by someone else are in use too."""
    ctx = _ctx(tmp_path)
    ensure_dir(ctx.layout.inbox("scheduler"))
    req = submit_request([{"id": "other", "agent": "shell", "prompt": "x"}])
    write_record(REQUEST, ctx.layout.inbox("scheduler") / f"{req['id']}.json", req)
    with pytest.raises(CtlError):
        _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "other")


def test_cmd_submit_refuses_id_already_in_the_queue(tmp_path: Path) -> None:
    """An id the scheduler's queue already holds is in use; nothing is written."""
    ctx = _ctx(tmp_path)
    ensure_dir(ctx.layout.wal_dir)
    with JobQueue.open(ctx.layout.wal_dir) as q:
        assert q.enqueue("old", {"agent": "shell", "prompt": "x"})
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"agent":"shell","prompt":"a","id":"new"}\n'
                    '{"agent":"shell","prompt":"b","id":"old"}\n')
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--from", str(jobs))
    assert (f"{jobs}:2: job id 'old' is already in use", []) == (str(info.value), _inbox(ctx))


def test_cmd_submit_single_json_is_one_object(tmp_path: Path) -> None:
    """submit --json of one job: {"id": ...}, not an array."""
    ctx = Ctx(cfg=_ctx(tmp_path).cfg, layout=_ctx(tmp_path).layout, json=True,
              out=io.StringIO(), err=io.StringIO())
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "one")
    assert {"id": "one"} == json.loads(ctx.out.getvalue())  # type: ignore[attr-defined]


def test_refused_submit_on_a_fresh_state_dir_writes_nothing_at_all(tmp_path: Path) -> None:
    """Bad input is refused before the submit lock is taken: no state dir, no lock file."""
    ctx = _ctx(tmp_path)
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--agent", "cluade", "--prompt", "x")
    assert (EXIT_USAGE, False) == (info.value.code, ctx.layout.root.exists())


def test_id_in_use_is_named_by_its_physical_line(tmp_path: Path) -> None:
    """An id found in use under the lock names its line, blank lines counted."""
    ctx = _ctx(tmp_path)
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "old")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('\n{"agent":"shell","prompt":"a"}\n\n\n'
                    '{"agent":"shell","prompt":"b","id":"old"}\n')
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--from", str(jobs))
    assert (EXIT_USAGE, f"{jobs}:5: job id 'old' is already in use") == (
        info.value.code, str(info.value))


def test_submit_lock_file_is_created_empty_and_never_written(tmp_path: Path) -> None:
    """submit leaves scheduler/submit.lock in place, empty (law 1: nothing is written)."""
    ctx = _ctx(tmp_path)
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "a")
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "b")
    assert (True, 0) == (ctx.layout.submit_lock.is_file(), ctx.layout.submit_lock.stat().st_size)


def test_cmd_submit_job_control_flags_reach_the_request(tmp_path: Path) -> None:
    """--after a,b --after c, --after-any, --priority, --delay (made absolute now), labels
    and --retries all land in the one request, checked."""
    ctx = _ctx(tmp_path)
    for job_id in ("a", "b", "c", "d"):
        assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", job_id)
    before = time.time()
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "e",
                              "--after", "a,b", "--after", "c", "--after-any", "d",
                              "--priority", "-7", "--delay", "10m", "--label", "team=infra",
                              "--label", "x=", "--retries", "3")
    job = next(r["jobs"][0] for r in _requests(ctx) if r["jobs"][0]["id"] == "e")
    when = parse_iso(job["not_before"])
    assert when is not None and before + 600 <= when < before + 600 + 30
    assert (["a", "b", "c"], ["d"], -7, {"team": "infra", "x": ""}, 3) == (
        job["after"], job["after_any"], job["priority"], job["labels"], job["retries"])


@pytest.mark.parametrize(("argv", "message"), [
    (("--after", "nosuch"), "after: job 'nosuch' does not exist"),
    (("--after", "a,,b"), "--after: expected JOB[,JOB...]"),
    (("--priority", "2000"), "priority 2000 is outside -1000..1000"),
    (("--not-before", "soon"), "--not-before: 'soon' is not an ISO-8601 time"),
    (("--delay", "ten"), "--delay: expected a duration"),
    (("--retries", "11"), "retries 11 is outside 0..10"),
    (("--label", "novalue"), "--label: expected K=V, got 'novalue'"),
    (("--label", "k=1", "--label", "k=2"), "--label: 'k' given twice"),
])
def test_cmd_submit_job_control_bad_input_exits_2_and_writes_nothing(
        tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    """Each bad job-control flag: exit 2 naming it, the inbox unchanged."""
    ctx = _ctx(tmp_path)
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "a")
    before = _inbox(ctx)
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--agent", "shell", "--prompt", "x", *argv)
    assert (EXIT_USAGE, before, True) == (info.value.code, _inbox(ctx),
                                          message in str(info.value))


def test_cmd_submit_from_may_wait_for_an_earlier_line_only(tmp_path: Path) -> None:
    """In a --from file a job may wait for one on an earlier line; one on a later line is
    refused naming the line, and nothing is queued."""
    ctx = _ctx(tmp_path)
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"id":"x","agent":"shell","prompt":"p"}\n'
                    '{"id":"y","agent":"shell","prompt":"p","after":["x"]}\n')
    bad.write_text('{"id":"p","agent":"shell","prompt":"p","after":["q"]}\n'
                   '{"id":"q","agent":"shell","prompt":"p"}\n')
    assert EXIT_OK == _submit(ctx, "--from", str(good))
    before = _inbox(ctx)
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--from", str(bad))
    assert (EXIT_USAGE, before) == (info.value.code, _inbox(ctx))
    assert str(info.value).startswith(f"{bad}:1: after: job 'q' comes later in the file")


def test_submit_below_min_free_is_refused_with_exit_1_and_nothing_written(
        tmp_path: Path) -> None:
    """disk.min_free not met (100% of the filesystem can never be free): exit 1, the
    message names the free space and the floor, no request is written."""
    ctx = _ctx(tmp_path)
    ctx.cfg = replace(ctx.cfg, disk=DiskConfig(min_free=FreeSpace(100.0, percent=True)))
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--agent", "shell", "--prompt", "true")
    assert (EXIT_FAILED, True, True, []) == (
        info.value.code, str(info.value).startswith("submission refused: disk: "),
        str(info.value).endswith("below min_free 100%"), _inbox(ctx))


def test_an_endless_prompt_file_is_refused_not_swallowed(tmp_path: Path) -> None:
    """`--prompt-file /dev/zero` (endless) and a prompt file over 16 MiB: exit 2 naming the
    file and the limit, read no further than the limit, nothing written."""
    ctx = _ctx(tmp_path)
    big = tmp_path / "big.md"
    big.write_bytes(b"x" * (16 * 1024 * 1024 + 1))
    for path in ("/dev/zero", str(big)):
        with pytest.raises(CtlError) as info:
            _submit(ctx, "--agent", "shell", "--prompt-file", path)
        assert EXIT_USAGE == info.value.code
        assert f"prompt file {path} is over the limit of 16777216 bytes (16 MiB)" == str(
            info.value)
    assert [] == _inbox(ctx)
    with pytest.raises(CtlError) as info:
        _submit(ctx, "--from", "/dev/zero")
    assert (EXIT_USAGE, []) == (info.value.code, _inbox(ctx))


def test_a_prompt_of_exactly_16_mib_is_taken(tmp_path: Path) -> None:
    """The limit is inclusive: a 16 MiB prompt file is submitted whole."""
    ctx = _ctx(tmp_path)
    edge = tmp_path / "edge.md"
    edge.write_bytes(b"y" * (16 * 1024 * 1024))
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt-file", str(edge), "--id", "e")
    assert 16 * 1024 * 1024 == len(_requests(ctx)[0]["jobs"][0]["prompt"])


def test_the_validator_refuses_a_prompt_over_16_mib() -> None:
    """Every door (a --from line, an API body) meets the same limit, counted in UTF-8 bytes:
    4,194,305 four-byte characters are over it."""
    assert _bad({"agent": "shell", "prompt": "\U0001F600" * (4 * 1024 * 1024 + 1)}).startswith(
        "prompt: 16777220 bytes, over the limit of 16777216 (16 MiB)")
