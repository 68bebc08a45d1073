"""Tests for supervisor.ctl.submit: validation at the door, ids, the one durable request."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, RepoConfig
from supervisor.ctl import build_parser
from supervisor.ctl.out import EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.ctl.submit import (
    Checker,
    JobError,
    Known,
    assign_ids,
    cmd_submit,
    known_repos,
    parse_jsonl,
    submit_lock,
    write_submission,
)
from supervisor.state.atomic import ensure_dir
from supervisor.state.jobs import submit_request
from supervisor.state.layout import REPOS, REQUEST, Layout, read_record, write_record
from supervisor.state.queue import JobQueue

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


def test_check_normalizes_a_minimal_job() -> None:
    """Defaults: no repos, no callback/timeout/batch/id, not exclusive."""
    assert {"id": None, "agent": "shell", "prompt": "echo", "repos": [], "callback": None,
            "timeout": None, "batch": None, "exclusive": False} == Checker(KNOWN).check(
        {"agent": "shell", "prompt": "echo"})


def test_check_converts_timeout_to_seconds() -> None:
    """A duration string becomes seconds; a number stays seconds."""
    checker = Checker(KNOWN)
    assert 120.0 == checker.check({"agent": "shell", "prompt": "x", "timeout": "2m"})["timeout"]
    assert 5 == checker.check({"agent": "shell", "prompt": "x", "timeout": 5})["timeout"]


@pytest.mark.parametrize(("obj", "message"), [
    ({"agent": "cluade", "prompt": "x"}, "unknown agent 'cluade'"),
    ({"prompt": "x"}, "missing key 'agent'"),
    ({"agent": "shell"}, "missing key 'prompt'"),
    ({"agent": "shell", "prompt": "  \n"}, "empty prompt"),
    ({"agent": "shell", "prompt": "x", "repos": ["nope"]}, "unknown repository 'nope'"),
    ({"agent": "shell", "prompt": "x", "repos": "app"},
     "repos must be a list of repository names, found string"),
    ({"agent": "shell", "prompt": "x", "repos": ["app", "app"]},
     "repos lists a repository twice"),
    ({"agent": "shell", "prompt": "x", "callback": "ftp://h/x"},
     "callback URL 'ftp://h/x' must be http:// or https:// with a host"),
    ({"agent": "shell", "prompt": "x", "callback": "http:///x"},
     "callback URL 'http:///x' must be http:// or https:// with a host"),
    ({"agent": "shell", "prompt": "x", "callback": "https://exa mple.com/"},
     "callback URL 'https://exa mple.com/' contains whitespace or a control character"),
    ({"agent": "shell", "prompt": "x", "callback": "https://h.example/a\tb"},
     "callback URL 'https://h.example/a\\tb' contains whitespace or a control character"),
    ({"agent": "shell", "prompt": "x", "callback": "https://h.example/\x7f"},
     "callback URL 'https://h.example/\\x7f' contains whitespace or a control character"),
    ({"agent": "shell", "prompt": "x", "callback": "https://h.example/\u00a0"},
     "callback URL 'https://h.example/\\xa0' contains whitespace or a control character"),
    ({"agent": "shell", "prompt": "x", "callback": "http://x:99999/"},
     "callback URL 'http://x:99999/' has an invalid port: Port out of range 0-65535"),
    ({"agent": "shell", "prompt": "x", "callback": "http://x:http/"},
     "callback URL 'http://x:http/' has an invalid port: Port could not be cast"),
    ({"agent": "shell", "prompt": "x", "callback": "http://x:0/"},
     "callback URL 'http://x:0/' has an invalid port: 0"),
    ({"agent": "shell", "prompt": "x", "callback": "http://[::1/"},
     "callback URL 'http://[::1/' is not a valid URL: Invalid IPv6 URL"),
    ({"agent": "shell", "prompt": "x", "timeout": "5 parsecs"}, "timeout: expected a duration"),
    ({"agent": "shell", "prompt": "x", "timeout": 0}, "timeout 0 must be positive"),
    ({"agent": "shell", "prompt": "x", "timeout": True},
     "timeout must be a duration (seconds or '30s'), found boolean"),
    ({"agent": "shell", "prompt": "x", "id": "bad id"}, "invalid job id 'bad id'"),
    ({"agent": "shell", "prompt": "x", "id": "taken"}, "job id 'taken' is already in use"),
    ({"agent": "shell", "prompt": "x", "exclusive": "yes"},
     "exclusive must be true or false, found string"),
    ({"agent": "shell", "prompt": "x", "batch": ""}, "batch must not be empty"),
    ({"agent": 3, "prompt": "x"}, "agent must be a string, found number"),
    ({"agent": "shell", "prompt": "x", "colour": 1, "size": 2}, "unknown keys 'colour', 'size'"),
    (["agent"], "expected a JSON object, found array"),
])
def test_check_refuses_each_error_class(obj: object, message: str) -> None:
    """Every class of bad submission is refused with a message naming the problem."""
    assert _bad(obj).startswith(message)


def test_parse_jsonl_names_file_and_line() -> None:
    """The first bad line is named by its physical number (blank lines count, are skipped)."""
    data = b'{"agent":"shell","prompt":"a"}\n\n' * 3 + b'{"agent":"cluade","prompt":"x"}\n'
    with pytest.raises(CtlError) as info:
        parse_jsonl(data, "jobs.jsonl", Checker(KNOWN))
    assert ("jobs.jsonl:7: unknown agent 'cluade'", EXIT_USAGE) == (str(info.value),
                                                                     info.value.code)


def test_parse_jsonl_reports_invalid_json_with_line() -> None:
    """Unparseable JSON names its line too."""
    with pytest.raises(CtlError) as info:
        parse_jsonl(b'{"agent":"shell","prompt":"a"}\n{"agent":\n', "j.jsonl", Checker(KNOWN))
    assert "j.jsonl:2: invalid JSON: Expecting value (column 10)" == str(info.value)


def test_parse_jsonl_refuses_duplicate_ids_in_the_file() -> None:
    """An id given twice in one file is refused at its second line, naming the first."""
    data = b'{"agent":"shell","prompt":"a","id":"x1"}\n{"agent":"shell","prompt":"b","id":"x1"}\n'
    with pytest.raises(CtlError) as info:
        parse_jsonl(data, "f", Checker(KNOWN))
    assert "f:2: duplicate job id 'x1' (also on line 1)" == str(info.value)


def test_parse_jsonl_keeps_file_order_and_skips_blank_lines() -> None:
    """Jobs come back in file order; whitespace-only lines are skipped."""
    data = b'\n{"agent":"shell","prompt":"1"}\n   \n{"agent":"claude","prompt":"2"}'
    assert ["1", "2"] == [j["prompt"] for j in parse_jsonl(data, "f", Checker(KNOWN))]


def test_assign_ids_avoids_ids_in_use_and_in_the_file() -> None:
    """Generated ids never collide with the queue, the inbox or ids given in the file."""
    jobs: list[dict[str, Any]] = [{"id": None}, {"id": "given"}, {"id": None}]
    tokens = iter(["aaaa", "aaaa", "bbbb", "cccc"])
    assign_ids(jobs, frozenset(), now=0.0, token=lambda: next(tokens))
    ids = [j["id"] for j in jobs]
    assert ["19700101T000000-aaaa", "given", "19700101T000000-bbbb"] == ids
    jobs = [{"id": None}]
    tokens = iter(["aaaa", "dddd"])
    assign_ids(jobs, frozenset({"19700101T000000-aaaa"}), now=0.0, token=lambda: next(tokens))
    assert "19700101T000000-dddd" == jobs[0]["id"]


def test_write_submission_writes_one_request_record(tmp_path: Path) -> None:
    """All jobs go into ONE REQUEST file of kind submit, each with created_at."""
    ctx = _ctx(tmp_path)
    path = write_submission(ctx.layout, [{"id": "a"}, {"id": "b"}], now=0.0)
    rec = read_record(REQUEST, path, owner=False)
    assert isinstance(rec, dict)
    assert ("submit", ["a", "b"], {"1970-01-01T00:00:00.000Z"}) == (
        rec["kind"], [j["id"] for j in rec["jobs"]], {j["created_at"] for j in rec["jobs"]})
    assert [path.name] == _inbox(ctx)


def test_known_repos_adds_the_registry(tmp_path: Path) -> None:
    """Repositories registered with `repo add` count, besides the config's."""
    ctx = _ctx(tmp_path)
    assert frozenset({"app"}) == known_repos(ctx.cfg, ctx.layout)
    ensure_dir(ctx.layout.root)
    write_record(REPOS, ctx.layout.repos_file, {"repos": {"extra": {"url": "/x"}}})
    assert frozenset({"app", "extra"}) == known_repos(ctx.cfg, ctx.layout)


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
            "exclusive": True} == job


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
])
def test_cmd_submit_refuses_without_writing(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """A refused submit exits 2 and leaves the inbox exactly as it was."""
    ctx = _ctx(tmp_path)
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "first")
    before = _inbox(ctx)
    with pytest.raises(CtlError) as info:
        _submit(ctx, *argv)
    assert (EXIT_USAGE, before) == (info.value.code, _inbox(ctx))


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


def test_parse_jsonl_refuses_non_utf8_with_line() -> None:
    """A line that is not UTF-8 is named, not a traceback."""
    with pytest.raises(CtlError) as info:
        parse_jsonl(b'{"agent":"shell","prompt":"\xff"}\n', "j.jsonl", Checker(KNOWN))
    assert str(info.value).startswith("j.jsonl:1: not UTF-8: ")


@pytest.mark.parametrize("url", ["http://h.example/cb", "https://h.example:8443/a?b=c#d",
                                 "http://127.0.0.1:65535/", "http://[::1]:80/x"])
def test_check_accepts_good_callback_urls(url: str) -> None:
    """http(s) URLs with a host and a port in range pass as they are."""
    assert url == Checker(KNOWN).check({"agent": "shell", "prompt": "x", "callback": url})[
        "callback"]


def test_parse_jsonl_refuses_duplicate_keys_with_line() -> None:
    """A key given twice in one line is refused naming it and the line (not last-wins)."""
    data = (b'{"agent":"shell","prompt":"a"}\n'
            b'{"agent":"shell","prompt":"a","id":"x","id":"y"}\n')
    with pytest.raises(CtlError) as info:
        parse_jsonl(data, "j.jsonl", Checker(KNOWN))
    assert (EXIT_USAGE, "j.jsonl:2: duplicate key 'id'") == (info.value.code, str(info.value))


def test_parse_jsonl_skips_a_utf8_bom_at_the_start() -> None:
    """A file saved with a UTF-8 byte order mark still parses from its first line."""
    data = b'\xef\xbb\xbf{"agent":"shell","prompt":"a"}\n'
    assert ["a"] == [j["prompt"] for j in parse_jsonl(data, "f", Checker(KNOWN))]


def test_cmd_submit_single_json_is_one_object(tmp_path: Path) -> None:
    """submit --json of one job: {"id": ...}, not an array."""
    ctx = Ctx(cfg=_ctx(tmp_path).cfg, layout=_ctx(tmp_path).layout, json=True,
              out=io.StringIO(), err=io.StringIO())
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "one")
    assert {"id": "one"} == json.loads(ctx.out.getvalue())  # type: ignore[attr-defined]


def test_submit_lock_file_is_created_empty_and_never_written(tmp_path: Path) -> None:
    """submit leaves scheduler/submit.lock in place, empty (law 1: nothing is written)."""
    ctx = _ctx(tmp_path)
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "a")
    assert EXIT_OK == _submit(ctx, "--agent", "shell", "--prompt", "x", "--id", "b")
    assert (True, 0) == (ctx.layout.submit_lock.is_file(), ctx.layout.submit_lock.stat().st_size)


def test_submit_lock_is_exclusive_between_processes(tmp_path: Path) -> None:
    """While one holder has the lock, another process cannot take it (flock LOCK_NB fails)."""
    layout = _ctx(tmp_path).layout
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "try:\n"
             "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n"
             "    print('busy')\n"
             "else:\n"
             "    print('free')\n")

    def other() -> str:
        done = subprocess.run([sys.executable, "-c", probe, str(layout.submit_lock)],
                              capture_output=True, text=True, check=True, timeout=60)
        return done.stdout.strip()

    with submit_lock(layout):
        inside = other()
    assert ("busy", "free") == (inside, other())


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
