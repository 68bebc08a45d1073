"""state.submission: the one validator, JSONL files, ids, the submit lock, the durable request."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import AgentConfig, Config, RepoConfig
from supervisor.ctl.out import Ctx
from supervisor.state.atomic import ensure_dir
from supervisor.state.layout import REPOS, REQUEST, Layout, read_record, write_record
from supervisor.state.queue import JobQueue
from supervisor.state.submission import (
    Checker,
    JobError,
    Known,
    accept,
    assign_ids,
    check_request,
    known,
    known_repos,
    parse_jsonl,
    refuse_unknown_dependencies,
    submit_lock,
    write_submission,
)

KNOWN = Known(agents=frozenset({"shell", "claude", "lazy"}), repos=frozenset({"app", "lib"}),
              ids=frozenset({"taken"}), refused=(("lazy", "has no model"),))


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


def _bad(obj: object) -> str:
    with pytest.raises(JobError) as info:
        Checker(KNOWN).check(obj)
    return str(info.value)


def test_check_normalizes_a_minimal_job() -> None:
    """Defaults: no repos, no callback/timeout/batch/id/idle_timeout, not exclusive."""
    assert {"id": None, "agent": "shell", "prompt": "echo", "repos": [], "callback": None,
            "timeout": None, "batch": None, "exclusive": False,
            "idle_timeout": None} == Checker(KNOWN).check(
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
    ({"agent": "shell", "prompt": "x", "callback": "http://h.example/\u00fc"},
     "callback URL 'http://h.example/\u00fc' is not ASCII: percent-encode its path"),
    ({"agent": "shell", "prompt": "x", "callback": "http://m\u00fcnchen.example/"},
     "callback URL 'http://m\u00fcnchen.example/' is not ASCII"),
    ({"agent": "shell", "prompt": "x", "callback": "http://a..b/"},
     "callback URL 'http://a..b/' has an invalid host name 'a..b'"),
    ({"agent": "shell", "prompt": "x", "callback": "http://" + "a" * 64 + ".example/"},
     "callback URL 'http://" + "a" * 64 + ".example/' has an invalid host name"),
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
    ({"agent": "shell", "prompt": "x", "idle_timeout": "soon"},
     "idle_timeout: expected a duration"),
    ({"agent": "shell", "prompt": "x", "idle_timeout": 0}, "idle_timeout 0 must be positive"),
    ({"prompt": "x", "resume": "../j"}, "resume: invalid job id '../j'"),
    ({"prompt": "x", "resume": 3}, "resume must be a job id, found number"),
    ({"prompt": "x", "resume": "j1", "repos": ["app"]},
     "repos cannot be given with resume"),
    ({"agent": "lazy", "prompt": "x"}, "agent 'lazy' has no model"),
    ({"agent": "shell", "prompt": "x", "workspace": "/w"}, "unknown key 'workspace'"),
])
def test_check_refuses_each_error_class(obj: object, message: str) -> None:
    """Every class of bad submission is refused with a message naming the problem."""
    assert _bad(obj).startswith(message)


def test_check_resume_needs_no_agent_and_keeps_the_target() -> None:
    """A job with `resume`: the agent may be left out (the resumed job's is taken later)."""
    job = Checker(KNOWN).check({"prompt": "go on", "resume": "j1", "idle_timeout": "2m"})
    assert (None, "j1", 120.0) == (job["agent"], job["resume"], job["idle_timeout"])


@pytest.mark.parametrize(("extra", "message"), [
    ({"resume_of": "j1"}, "resume_of and workspace go together"),
    ({"workspace": "/w"}, "resume_of and workspace go together"),
    ({"resume_of": "j1", "workspace": "rel"}, "workspace must be an absolute path"),
    ({"resume_of": "../x", "workspace": "/w"}, "resume_of: invalid job id '../x'"),
    ({"resume_of": "j1", "workspace": "/w", "resume_session": 5},
     "resume_session must be a string, found number"),
    ({"resume": "j1"}, "unknown key 'resume'"),
])
def test_stored_resume_keys_are_checked_by_shape(extra: dict[str, Any], message: str) -> None:
    """The scheduler's check of a request: resume_of + workspace (+ resume_session), well
    formed; the door's `resume` never reaches it."""
    job = {"id": "j2", "agent": "shell", "prompt": "x", **extra}
    with pytest.raises(JobError) as info:
        Checker(None).check(job, stored=True)
    assert str(info.value).startswith(message)


def _finished(layout: Layout, job_id: str, **fields: Any) -> None:
    """A job in the real queue, finished as the scheduler records it."""
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue(job_id, {"agent": fields.pop("agent", "claude"), "prompt": "p",
                           "repos": fields.pop("repos", []),
                           "workspace": fields.pop("workspace", None)})
        q.update(job_id, **{"state": "completed", **fields})


def test_accept_resolves_a_resume_to_the_jobs_session_and_workspace(tmp_path: Path) -> None:
    """resume j1: the request carries j1's agent, session, workspace and repos, and
    resume_of; no `resume` key."""
    ctx = _ctx(tmp_path)
    ws = tmp_path / "ws1"
    ws.mkdir()
    ensure_dir(ctx.layout.wal_dir)
    _finished(ctx.layout, "j1", session_id="s-1", workspace=str(ws), repos=["app"])
    jobs = [Checker(known(ctx.cfg, ctx.layout)).check({"prompt": "more", "resume": "j1"})]
    [new_id] = accept(ctx.cfg, ctx.layout, jobs)
    [req] = _requests(ctx)
    [job] = req["jobs"]
    assert (new_id, "claude", "j1", "s-1", str(ws), ["app"], False) == (
        job["id"], job["agent"], job["resume_of"], job["resume_session"], job["workspace"],
        job["repos"], "resume" in job)
    assert [job] == check_request(req)


@pytest.mark.parametrize(("setup", "job", "message"), [
    ({}, {"resume": "ghost"}, "resume: no such job 'ghost'"),
    ({"state": "running"}, {"resume": "j1"},
     "resume: job 'j1' is running: only a finished job's session can be resumed"),
    ({"session_id": None}, {"resume": "j1"},
     "resume: job 'j1' has no session id (its agent reported none)"),
    ({"workspace": "/nonexistent/ws"}, {"resume": "j1"},
     "resume: the workspace of job 'j1' (/nonexistent/ws) no longer exists"),
    ({}, {"resume": "j1", "agent": "shell"},
     "resume: job 'j1' ran agent 'claude', not 'shell' (a resumed session keeps its agent)"),
    ({"agent": "retired"}, {"resume": "j1"},
     "resume: job 'j1' ran agent 'retired', which is no longer configured"),
])
def test_accept_refuses_a_resume_that_cannot_be(tmp_path: Path, setup: dict[str, Any],
                                                job: dict[str, Any], message: str) -> None:
    """Each reason a session cannot be continued is named; nothing is written."""
    ctx = _ctx(tmp_path)
    ws = tmp_path / "ws1"
    ws.mkdir()
    ensure_dir(ctx.layout.wal_dir)
    fields = {"session_id": "s-1", "workspace": str(ws), **setup}
    _finished(ctx.layout, "j1", **fields)
    checked = [Checker(None).check({"prompt": "more", **job})]
    with pytest.raises(JobError) as info:
        accept(ctx.cfg, ctx.layout, checked, source=("jobs.jsonl", b'{"x": 1}\n'))
    assert f"jobs.jsonl:1: {message}" == str(info.value)
    assert [] == _inbox(ctx)


def test_a_directory_session_resumes_without_a_session_id(tmp_path: Path) -> None:
    """aider keeps its session in the workspace: a job of it with no session id resumes."""
    ctx = _ctx(tmp_path)
    cfg = Config(state_dir=ctx.cfg.state_dir, workspace_dir=ctx.cfg.workspace_dir,
                 agents={"aider": AgentConfig(adaptor="aider", model="openai/gpt-4o")})
    ws = tmp_path / "ws1"
    ws.mkdir()
    ensure_dir(ctx.layout.wal_dir)
    _finished(ctx.layout, "a1", agent="aider", workspace=str(ws))
    accept(cfg, ctx.layout, [Checker(None).check({"prompt": "more", "resume": "a1"})])
    [job] = _requests(ctx)[0]["jobs"]
    assert ("aider", None, "a1") == (job["agent"], job["resume_session"], job["resume_of"])


def test_parse_jsonl_names_file_and_line() -> None:
    """The first bad line is named by its physical number (blank lines count, are skipped)."""
    data = b'{"agent":"shell","prompt":"a"}\n\n' * 3 + b'{"agent":"cluade","prompt":"x"}\n'
    with pytest.raises(JobError) as info:
        parse_jsonl(data, "jobs.jsonl", Checker(KNOWN))
    assert "jobs.jsonl:7: unknown agent 'cluade'" == str(info.value)


def test_parse_jsonl_reports_invalid_json_with_line() -> None:
    """Unparseable JSON names its line too."""
    with pytest.raises(JobError) as info:
        parse_jsonl(b'{"agent":"shell","prompt":"a"}\n{"agent":\n', "j.jsonl", Checker(KNOWN))
    assert "j.jsonl:2: invalid JSON: Expecting value (column 10)" == str(info.value)


def test_parse_jsonl_refuses_duplicate_ids_in_the_file() -> None:
    """An id given twice in one file is refused at its second line, naming the first."""
    data = b'{"agent":"shell","prompt":"a","id":"x1"}\n{"agent":"shell","prompt":"b","id":"x1"}\n'
    with pytest.raises(JobError) as info:
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


def test_parse_jsonl_refuses_non_utf8_with_line() -> None:
    """A line that is not UTF-8 is named, not a traceback."""
    with pytest.raises(JobError) as info:
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
    with pytest.raises(JobError) as info:
        parse_jsonl(data, "j.jsonl", Checker(KNOWN))
    assert "j.jsonl:2: duplicate key 'id'" == str(info.value)


def test_parse_jsonl_skips_a_utf8_bom_at_the_start() -> None:
    """A file saved with a UTF-8 byte order mark still parses from its first line."""
    data = b'\xef\xbb\xbf{"agent":"shell","prompt":"a"}\n'
    assert ["a"] == [j["prompt"] for j in parse_jsonl(data, "f", Checker(KNOWN))]


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


def test_job_control_keys_are_normalized_and_defaults_not_stored() -> None:
    """after/after_any as given, priority, not_before in batchd's own ISO form, labels,
    retries; a zero priority, no labels and no retries are not stored."""
    job = Checker(KNOWN).check({"agent": "shell", "prompt": "p", "after": ["a", "b"],
                                "after_any": ["c"], "priority": 7,
                                "not_before": "2027-01-15T09:00:00+01:00",
                                "labels": {"team": "infra", "ticket": "T-1"}, "retries": 2})
    assert (["a", "b"], ["c"], 7, "2027-01-15T08:00:00.000Z", {"team": "infra", "ticket": "T-1"},
            2) == (job["after"], job["after_any"], job["priority"], job["not_before"],
                   job["labels"], job["retries"])
    plain = Checker(KNOWN).check({"agent": "shell", "prompt": "p", "priority": 0,
                                  "labels": {}, "retries": 0})
    assert not {"priority", "labels", "retries"} & plain.keys()


@pytest.mark.parametrize(("obj", "message"), [
    ({"after": "a"}, "after must be a non-empty list of job ids"),
    ({"after": ["../x"]}, "after: '../x' is not a job id"),
    ({"after": ["a", "a"]}, "after lists a job twice"),
    ({"id": "me", "after": ["me"]}, "after: a job cannot wait for itself ('me')"),
    ({"after": ["a"], "after_any": ["a"]}, "after and after_any both name 'a'"),
    ({"priority": 1001}, "priority 1001 is outside -1000..1000"),
    ({"priority": -1001}, "priority -1001 is outside -1000..1000"),
    ({"priority": True}, "priority must be an integer"),
    ({"not_before": "tomorrow"}, "not_before 'tomorrow' is not an ISO-8601 time"),
    ({"retries": 11}, "retries 11 is outside 0..10"),
    ({"retries": -1}, "retries -1 is outside 0..10"),
    ({"labels": ["a=b"]}, "labels must be an object of strings"),
    ({"labels": {"a b": "x"}}, "label key 'a b' must be"),
    ({"labels": {"k": 1}}, "label 'k': the value must be a string"),
    ({"labels": {"k": "x\ny"}}, "label 'k': the value must be a string"),
    ({"labels": {"k": "\udcff"}}, "label 'k' is not valid UTF-8 text: '\\udcff' at character 0"),
    ({"not_before": "9999-12-31T23:59:59-01:00"},
     "not_before '9999-12-31T23:59:59-01:00' is not an ISO-8601 time"),
    ({"not_before": "0001-01-01T00:00:00+01:00"},
     "not_before '0001-01-01T00:00:00+01:00' is not an ISO-8601 time"),
    ({"timeout": "99999999999d"},
     "timeout: expected a duration of at most 36500d (100 years), got '99999999999d'"),
    ({"idle_timeout": 1e12},
     "idle_timeout: expected a duration of at most 36500d (100 years), got 1000000000000.0"),
])
def test_job_control_bad_input_names_the_key(obj: dict[str, Any], message: str) -> None:
    """Each bad job-control value is refused with a message naming the key."""
    assert _bad({"agent": "shell", "prompt": "p", **obj}).startswith(message)


def test_dependencies_must_exist_or_come_earlier_so_no_cycle_can_be_made() -> None:
    """A job may wait for a job in use or one earlier in the same submission; one later in
    the file (what a cycle would need) or unknown is refused naming the line."""
    data = b'{"id":"x","after":["y"]}\n{"id":"y"}\n'
    jobs = [{"id": "a", "after": ["old"]}, {"id": "b", "after_any": ["a"]}]
    refuse_unknown_dependencies(jobs, frozenset({"old"}))
    with pytest.raises(JobError) as later:
        refuse_unknown_dependencies([{"id": "x", "after": ["y"]}, {"id": "y"}], frozenset(),
                                    ("j.jsonl", data))
    with pytest.raises(JobError) as unknown:
        refuse_unknown_dependencies([{"id": "z", "after": ["ghost"]}], frozenset())
    assert ("j.jsonl:1: after: job 'y' comes later in the file (a job can only wait for "
            "jobs submitted before it)", "after: job 'ghost' does not exist (a job can only "
            "wait for jobs submitted before it)") == (str(later.value), str(unknown.value))


def test_check_request_keeps_the_job_control_keys_and_retry_of() -> None:
    """The scheduler's check of a request accepts what the door wrote, retry_of included;
    a user submission may not set retry_of."""
    req = {"jobs": [{"id": "r2", "agent": "shell", "prompt": "p", "retry_of": "r1",
                     "after": ["x"], "priority": 3, "created_at": "2027-01-15T08:00:00.000Z"}]}
    (job,) = check_request(req)
    assert ("r1", ["x"], 3) == (job["retry_of"], job["after"], job["priority"])
    assert _bad({"agent": "shell", "prompt": "p", "retry_of": "r1"}).startswith(
        "unknown key 'retry_of'")


# -- accept_many (the api's writer) -----------------------------------------------------------

def _cfg(tmp_path: Path) -> tuple[Config, Layout]:
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")
    return cfg, Layout(cfg.state_dir)


def _job2(prompt: str, job_id: str | None = None) -> dict[str, Any]:
    job = Checker(None).check({"agent": "shell", "prompt": prompt})
    job["id"] = job_id
    return job


def _requests_in(layout: Layout) -> list[dict[str, Any]]:
    """The requests in the scheduler's inbox, oldest first."""
    folder = layout.inbox("scheduler")
    names = sorted(os.listdir(folder), key=lambda n: os.stat(folder / n).st_mtime_ns)
    return [read_record(REQUEST, folder / n, owner=False) for n in names]


def test_accept_many_writes_one_request_for_every_submission(tmp_path: Path) -> None:
    """Three submissions: three answers, ONE request file holding all their jobs."""
    from supervisor.state.submission import accept_many

    cfg, layout = _cfg(tmp_path)
    got = accept_many(cfg, layout, [[_job2("a")], [_job2("b"), _job2("c", "given")],
                                    [_job2("d")]])
    assert [1, 2, 1] == [len(g) for g in got if isinstance(g, list)]
    assert "given" == got[1][1]  # type: ignore[index]
    [req] = _requests_in(layout)
    assert ["a", "b", "c", "d"] == [j["prompt"] for j in req["jobs"]]


def test_accept_many_replays_the_same_job_and_refuses_another(tmp_path: Path) -> None:
    """An id in use by the very same job: accepted, not written again; by another job:
    Refused, and only that submission."""
    from supervisor.state.submission import Refused, accept_many

    cfg, layout = _cfg(tmp_path)
    accept_many(cfg, layout, [[_job2("a", "x")]])
    got = accept_many(cfg, layout, [[_job2("a", "x")], [_job2("other", "x")], [_job2("z")]])
    assert ["x"] == got[0]
    assert isinstance(got[1], Refused) and "'x'" in str(got[1])
    assert isinstance(got[2], list)
    written = sorted([(j["prompt"], j["id"] == "x") for j in r["jobs"]]
                     for r in _requests_in(layout))
    assert [[("a", True)], [("z", False)]] == written


def test_same_job_compares_the_checked_keys() -> None:
    """What the client sent, normalized, against what is known; id and created_at aside."""
    from supervisor.state.submission import same_job

    job = _job2("a", "x")
    assert same_job({**job, "created_at": "t", "state": "running"}, job)
    assert not same_job({**job, "prompt": "b"}, job)


_SURROGATE = "a lone surrogate (a \\ud800-style JSON escape, or a command-line argument that " \
    "is not UTF-8)"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("prompt", "hi \ud800", f"prompt is not valid UTF-8 text: '\\ud800' at character 3 is "
     f"{_SURROGATE}"),
    ("prompt", "echo \x00", "prompt contains a NUL character (\\u0000) at character 5"),
    ("batch", "\udcff", f"batch is not valid UTF-8 text: '\\udcff' at character 0 is "
     f"{_SURROGATE}"),
    ("batch", "b\x00", "batch contains a NUL character (\\u0000) at character 1"),
    ("callback", "http://h.example/\ud800", "callback is not valid UTF-8 text: '\\ud800' at "
     f"character 17 is {_SURROGATE}"),
    ("agent", "sh\udcffell", f"agent is not valid UTF-8 text: '\\udcff' at character 2 is "
     f"{_SURROGATE}"),
    ("repos", ["\udcff"], f"repos is not valid UTF-8 text: '\\udcff' at character 0 is "
     f"{_SURROGATE}"),
    ("id", "\udcff", "invalid job id '\\udcff'"),
    ("after", ["\udcff"], "after: '\\udcff' is not a job id"),
    ("resume", "\udcff", "resume: invalid job id '\\udcff'"),
])
def test_text_no_record_can_carry_is_refused_naming_the_field(key: str, value: object,
                                                              message: str) -> None:
    """A lone surrogate (JSON "\\ud800", or a non-UTF-8 argv byte as Python decodes it) or a
    NUL in any text field is refused by the one validator, naming the field: it used to
    pass and fail later as a UnicodeEncodeError traceback (batchctl) or a 500 (the api)."""
    obj: dict[str, Any] = {"agent": "shell", "prompt": "p", key: value}
    if key == "resume":
        del obj["agent"]
    assert message == _bad(obj).split(" (expected")[0]


def test_a_jsonl_line_with_a_lone_surrogate_escape_names_the_line_and_field() -> None:
    """`submit --from`: a line holding the JSON escape \\ud800 is refused naming file, line
    and field (valid JSON, but text no record can be written with)."""
    data = b'{"agent":"shell","prompt":"ok"}\n{"agent":"shell","prompt":"x\\ud800"}\n'
    with pytest.raises(JobError) as info:
        parse_jsonl(data, "j.jsonl", Checker(KNOWN))
    assert (f"j.jsonl:2: prompt is not valid UTF-8 text: '\\ud800' at character 1 is "
            f"{_SURROGATE}") == str(info.value)


def test_a_stored_request_with_a_lone_surrogate_is_refused() -> None:
    """The scheduler's check of a request refuses such text too (the same validator)."""
    with pytest.raises(JobError) as info:
        check_request({"jobs": [{"id": "j1", "agent": "shell", "prompt": "p",
                                 "created_at": "2026-01-01T00:00:00.000Z",
                                 "resume_of": "j0", "workspace": "/w",
                                 "resume_session": "\ud800"}]})
    assert str(info.value).startswith("jobs[0] (j1): resume_session is not valid UTF-8 text")


@pytest.mark.parametrize(("line", "message"), [
    (b'{"agent":"shell","prompt":"x","timeout":NaN}', "invalid JSON: NaN is not a JSON value"),
    (b'{"agent":"shell","prompt":"x","timeout":-Infinity}',
     "invalid JSON: -Infinity is not a JSON value"),
    (b'{"agent":"shell","prompt":"x","priority":' + b"9" * 5000 + b"}",
     "invalid JSON: a number too long to read (exceeds the limit (4300 digits) for integer "
     "string conversion)"),
    (b'{"agent":"shell","prompt":"x","labels":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "invalid JSON: nested too deeply"),
])
def test_json_python_reads_but_a_job_cannot_hold_is_named_with_its_line(
        line: bytes, message: str) -> None:
    """NaN/Infinity (not JSON), a number past Python's 4300-digit cap (ValueError) and
    nesting past the recursion limit (RecursionError) were tracebacks: each is a JobError
    naming the file and line, as any bad JSON."""
    with pytest.raises(JobError) as info:
        parse_jsonl(b'{"agent":"shell","prompt":"ok"}\n' + line + b"\n", "j.jsonl",
                    Checker(KNOWN))
    assert f"j.jsonl:2: {message}" == str(info.value)


def test_an_id_whose_folder_is_left_over_is_refused_at_every_door(tmp_path: Path) -> None:
    """A job folder the queue no longer knows (its log quarantined as corrupt) keeps its id
    in use: a new job under it would run among the old files and read the old result (it
    ended failed, "result.json unreadable"). accept() refuses it naming the folder and the
    --from line, writing nothing; accept_many refuses that submission only."""
    from supervisor.state.submission import Refused, accept_many

    cfg, layout = _cfg(tmp_path)
    (layout.job_dir("old")).mkdir(parents=True)
    data = b'{"agent":"shell","prompt":"a"}\n{"agent":"shell","prompt":"b","id":"old"}\n'
    jobs = parse_jsonl(data, "j.jsonl", Checker(None))
    with pytest.raises(JobError) as info:
        accept(cfg, layout, jobs, source=("j.jsonl", data))
    assert (f"j.jsonl:2: job id 'old' is already in use: its folder {layout.job_dir('old')} "
            "exists (left by a job the queue no longer knows: remove the folder to reuse "
            "the id)") == str(info.value)
    assert not layout.inbox("scheduler").exists() or [] == _requests_in(layout)
    got = accept_many(cfg, layout, [[_job2("a", "old")], [_job2("b", "new")]])
    assert isinstance(got[0], Refused) and ["new"] == got[1]
    [req] = _requests_in(layout)
    assert ["new"] == [j["id"] for j in req["jobs"]]


# -- push (CONTRACT.md "Results") -------------------------------------------------------------

PUSHY = Known(agents=frozenset({"shell"}), repos=frozenset({"app", "ro"}), ids=frozenset(),
              unpushable=(("ro", "its URL git://h/ro.git uses the read-only git protocol"),))


def test_push_key_is_true_or_a_branch_and_false_means_none() -> None:
    """`push: true` is kept as true (batchd/<id> once the id is known), a string as the
    branch; false and null store nothing."""
    check = Checker(PUSHY).check
    assert True is check({"agent": "shell", "prompt": "p", "repos": ["app"], "push": True})["push"]
    assert "feat/x" == check({"agent": "shell", "prompt": "p", "repos": ["app"],
                              "push": "feat/x"})["push"]
    for off in (False, None):
        assert "push" not in check({"agent": "shell", "prompt": "p", "repos": ["app"],
                                    "push": off})


@pytest.mark.parametrize(("obj", "message"), [
    ({"push": True}, "push needs a repository"),
    ({"repos": ["app"], "push": "a..b"}, "not a valid git branch name: 'a..b'"),
    ({"repos": ["app"], "push": "-x"}, "check-ref-format"),
    ({"repos": ["app"], "push": "x.lock"}, "check-ref-format"),
    ({"repos": ["app"], "push": 3}, "push must be true, false or a branch name, found number"),
    ({"repos": ["ro"], "push": True}, "repository 'ro' cannot be pushed to: its URL git://"),
    ({"repos": ["app"], "id": "a..b", "push": True}, "default branch batchd/a..b"),
])
def test_push_refusals_name_why(obj: dict[str, Any], message: str) -> None:
    """Each push refusal at the door names the problem."""
    with pytest.raises(JobError) as info:
        Checker(PUSHY).check({"agent": "shell", "prompt": "p", **obj})
    assert message in str(info.value)


def test_known_lists_the_repositories_a_push_cannot_reach(tmp_path: Path) -> None:
    """known() marks git:// URLs (read-only protocol) as unpushable; a path is not judged
    when this process may write it."""
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
                 repositories={"app": RepoConfig(url=str(tmp_path)),
                               "daemon": RepoConfig(url="git://example.com/x.git")})
    got = known(cfg, Layout(cfg.state_dir))
    assert ["daemon"] == [name for name, _ in got.unpushable]


def test_in_use_asks_each_layer_and_counts_what_it_gave_out() -> None:
    """InUse: an id is in use when any layer it was read from holds it (the inbox's, the
    queue's live set, the writes in flight) or it was given out since; the layers are
    not copied, so an id the queue gains later is seen too."""
    from supervisor.state.submission import InUse

    queued = {"q1"}
    in_use = InUse({"p1"}, queued, frozenset({"f1"}))
    assert [True, True, True, False] == [i in in_use for i in ("p1", "q1", "f1", "n1")]
    in_use.update(["n1"])
    queued.add("q2")
    assert (True, True, {"n1"}) == ("n1" in in_use, "q2" in in_use, in_use.added)


def test_accept_many_sees_an_id_only_the_inbox_holds(tmp_path: Path) -> None:
    """With long-lived readers (the api's QueueIds and PendingIds), an id pending in the
    inbox is in use: the same job is a replay (not written again), another is refused."""
    from supervisor.state.queuefollow import QueueIds
    from supervisor.state.submission import Refused, accept_many
    from supervisor.state.view import PendingIds

    cfg, layout = _cfg(tmp_path)
    readers = {"queue_ids": QueueIds(layout.wal_dir), "pending_ids": PendingIds(layout)}
    assert [["x"]] == accept_many(cfg, layout, [[_job2("a", "x")]], **readers)
    got = accept_many(cfg, layout, [[_job2("a", "x")], [_job2("b", "x")]], **readers)
    assert ["x"] == got[0] and isinstance(got[1], Refused)
    assert 1 == len(_requests_in(layout))


def test_a_written_request_survives_every_power_cut_whole_or_not_at_all(
        tmp_path: Path) -> None:
    """write_taken, as the api's writers run it (one request per decision, two in a row):
    a power cut at any point leaves each request whole or absent, never torn, and every
    request whose write returned (its POSTs answered) is in the inbox."""
    from supervisor.state.submission import Taken, write_taken
    from supervisor.state.view import PendingIds, read_pending
    from tests.crashfs import CrashFS, explore

    def setup(root: str) -> None:
        ensure_dir(Layout(Path(root)).inbox("scheduler"))

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        layout = Layout(Path(root))
        for ids in (["a1", "a2"], ["b1"]):
            taken = Taken([ids], [(0, [_job2("p", i) for i in ids])])
            assert [ids] == write_taken(layout, taken, fs=fs)
            yield

    def recover(root: str) -> Any:
        layout = Layout(Path(root))
        pending = sorted(read_pending(layout).jobs)
        assert sorted(PendingIds(layout).refresh()) == pending
        assert not [n for n in os.listdir(layout.inbox("scheduler")) if ".corrupted." in n]
        return pending

    report = explore(tmp_path, setup=setup, workload=workload, recover=recover,
                     expected=[[], ["a1", "a2"], ["a1", "a2", "b1"]])
    assert {0, 1, 2} == set(report.recovered_to)
