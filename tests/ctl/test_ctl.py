"""Tests for supervisor.ctl: the command line of every command, its exit codes and --json.

These drive `main(argv)` in-process against a state directory in tmp_path with batchd down
(the round trips with a running batchd are in tests/proc/test_batchctl.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.ctl import COMMANDS, main
from supervisor.state.jobs import RECORD_FIELDS

CONFIG = """\
state_dir: {state}
repositories:
  app: {{url: /srv/git/app.git}}
"""


class Cli:
    """Runs `batchctl -c CONFIG ...` in-process and keeps what it printed."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.state = tmp_path / "state"
        self.config = tmp_path / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=self.state))
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def __call__(self, *argv: str) -> int:
        code = main(["-c", str(self.config), *argv])
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def json(self, *argv: str) -> Any:
        assert 0 == self(*argv, "--json"), self.err
        return json.loads(self.out)

    def inbox(self) -> list[str]:
        folder = self.state / "scheduler" / "inbox"
        return sorted(os.listdir(folder)) if folder.is_dir() else []


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    """Without a command: exit 2 and the usage."""
    assert 2 == main([])
    assert "usage: batchctl" in cli.capsys.readouterr().err


def test_unknown_command_and_option_are_usage_errors(cli: Cli) -> None:
    """argparse errors exit 2 with a usage message."""
    assert 2 == cli("frobnicate")
    assert "usage:" in cli.err
    assert 2 == cli("jobs", "--colour")
    assert "unrecognized arguments: --colour" in cli.err


def test_help_exits_0(cli: Cli) -> None:
    """--help prints every command and exits 0."""
    assert 0 == cli("--help")
    assert all(name in cli.out for name in COMMANDS)


def test_bad_config_exits_2_naming_the_file(cli: Cli, tmp_path: Path) -> None:
    """A configuration error is a message naming the file, exit 2, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: [1, 2\n")
    assert 2 == main(["-c", str(bad), "status"])
    err = cli.capsys.readouterr().err
    assert (True, True, False) == (err.startswith("batchctl: "), str(bad) in err,
                                   "Traceback" in err)
    assert 2 == main(["-c", str(tmp_path / "missing.yaml"), "status"])


def test_status_while_down_exits_0_with_exact_shape(cli: Cli) -> None:
    """status --json: exactly the keys of CONTRACT.md; running false, pid null."""
    assert {"batchd": {"running": False, "pid": None}, "workers": [], "jobs": {},
            "degraded": [], "paused": False} == cli.json("status")
    assert 0 == cli("status")
    assert "not running" in cli.out


@pytest.mark.parametrize("argv", [("workers",), ("start", "scheduler"), ("stop", "locks"),
                                  ("restart", "reaper"), ("shutdown",), ("reload",)])
def test_control_commands_exit_1_when_down(cli: Cli, argv: tuple[str, ...]) -> None:
    """Control commands and `workers` need batchd: exit 1, the message, nothing written."""
    assert 1 == cli(*argv)
    assert f"batchctl: batchd is not running (state dir {cli.state})\n" == cli.err
    assert not (cli.state / "control" / "inbox").exists() or not os.listdir(
        cli.state / "control" / "inbox")


@pytest.mark.parametrize("op", ["start", "stop", "restart"])
def test_unknown_worker_is_a_usage_error(cli: Cli, op: str) -> None:
    """An unknown worker name exits 2 before anything else (even with batchd down)."""
    assert 2 == cli(op, "schedulr")
    assert "invalid choice: 'schedulr'" in cli.err


def test_submit_then_status_jobs_while_down(cli: Cli) -> None:
    """A job submitted with batchd down is durable in the inbox and shows as queued."""
    assert 0 == cli("submit", "--agent", "shell", "--prompt", "echo hi", "--id", "j1",
                    "--repo", "app", "--batch", "b1")
    assert ("j1\n", 1) == (cli.out, len(cli.inbox()))
    rec = cli.json("status", "j1")
    assert list(RECORD_FIELDS) == list(rec)
    assert ("queued", ["app"], "b1", None) == (rec["state"], rec["repos"], rec["batch"],
                                               rec["pid"])
    assert ["j1"] == [r["id"] for r in cli.json("jobs")]
    assert [] == cli.json("jobs", "--state", "running")
    assert ["j1"] == [r["id"] for r in cli.json("jobs", "--batch", "b1")]
    assert {"queued": 1} == cli.json("status")["jobs"]


def test_submit_json_of_one_job_prints_one_object(cli: Cli) -> None:
    """submit --json of a single job: one object {"id": ...} (one thing is one object)."""
    assert {"id": "x1"} == cli.json("submit", "--agent", "shell", "--prompt", "x", "--id", "x1")


def test_submit_from_json_prints_an_array_of_ids(cli: Cli, tmp_path: Path) -> None:
    """submit --from F --json: a listing, the JSON array of the ids in file order."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"agent":"shell","prompt":"a","id":"b2"}\n'
                    '{"agent":"shell","prompt":"b","id":"a1"}\n')
    assert ["b2", "a1"] == cli.json("submit", "--from", str(jobs))


def test_submit_refusal_exits_2_with_message_and_no_file(cli: Cli, tmp_path: Path) -> None:
    """A bad --from line: exit 2, `file:line: why` on stderr, inbox untouched."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"agent":"shell","prompt":"a"}\n{"agent":"cluade","prompt":"b"}\n')
    assert 2 == cli("submit", "--from", str(jobs))
    assert (f"batchctl: {jobs}:2: unknown agent 'cluade'\n", "", []) == (
        cli.err, cli.out, cli.inbox())


def test_submit_prompt_options_are_exclusive(cli: Cli) -> None:
    """--prompt and --prompt-file together: argparse usage error."""
    assert 2 == cli("submit", "--agent", "shell", "--prompt", "x", "--prompt-file", "f")
    assert "not allowed with argument" in cli.err


def test_batch_and_batches_shapes(cli: Cli) -> None:
    """batch B / batches: {batch, counts, done, jobs}; unknown batch exit 1."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "a", "--batch", "n")
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "b", "--batch", "n")
    expected = {"batch": "n", "counts": {"queued": 2}, "done": False, "jobs": ["a", "b"]}
    assert expected == cli.json("batch", "n")
    assert [expected] == cli.json("batches")
    assert 1 == cli("batch", "other")
    assert "batchctl: no such batch: other\n" == cli.err


def test_stats_shape_with_no_queue(cli: Cli) -> None:
    """stats --json: every counter, restarts per worker, what the reaper removed and the
    agents' usage, zeros when unknown."""
    assert {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0,
            "lost": 0, "recovered": 0,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "turns": 0,
                      "jobs": 0},
            "usage_by_agent": {},
            "restarts": {"scheduler": 0, "locks": 0, "reaper": 0, "callbacks": 0},
            "reaped": {"tmp": 0, "corrupted": 0, "processes": 0, "workspaces": 0,
                       "job_folders": 0, "jobs": 0, "mirrors": 0,
                       "locks": 0, "callbacks": 0}} == cli.json("stats")


def test_job_commands_on_unknown_job_exit_1(cli: Cli) -> None:
    """status/output/tail/wait/cancel of a job nobody submitted: exit 1, no such job."""
    for argv in (("status", "ghost"), ("output", "ghost"), ("tail", "ghost"),
                 ("wait", "ghost"), ("cancel", "ghost")):
        assert 1 == cli(*argv), argv
        assert "batchctl: no such job: ghost\n" == cli.err


def test_job_commands_refuse_malformed_ids_with_2(cli: Cli) -> None:
    """A job id outside [A-Za-z0-9][A-Za-z0-9._-]{0,63} is a usage error."""
    for argv in (("status", "../etc"), ("output", ".x"), ("cancel", "a b"), ("wait", "a/b")):
        assert 2 == cli(*argv), argv
        assert "invalid job id" in cli.err


def test_output_and_tail_of_a_queued_job_print_nothing(cli: Cli) -> None:
    """A job without output yet: empty output, exit 0."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "q")
    assert (0, "") == (cli("output", "q"), cli.out)
    assert (0, "") == (cli("tail", "q", "-n", "5"), cli.out)


def test_output_and_tail_json_print_one_document(cli: Cli) -> None:
    """output/tail --json: one object each, the text decoded, invalid bytes replaced."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "q")
    assert {"job": "q", "output": "", "bytes": 0} == cli.json("output", "q")
    assert {"job": "q", "lines": []} == cli.json("tail", "q")
    out = cli.state / "jobs" / "q" / "output"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"one\ntwo \xff\nthree\n")
    assert {"job": "q", "output": "one\ntwo \ufffd\nthree\n", "bytes": 16} == (
        cli.json("output", "q"))
    assert {"job": "q", "lines": ["two \ufffd", "three"]} == cli.json("tail", "q", "-n", "2")


def test_tail_count_must_be_a_number(cli: Cli) -> None:
    """-n takes an integer (argparse: exit 2)."""
    assert 2 == cli("tail", "q", "-n", "many")


def test_wait_times_out_with_124(cli: Cli) -> None:
    """A job that never ends (batchd down): wait --timeout exits 124 naming it."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "slow")
    assert 124 == cli("wait", "slow", "--timeout", "200ms")
    assert "batchctl: timed out after 0.2s waiting for: slow (queued)\n" == cli.err


def test_wait_json_prints_the_records_when_it_times_out(cli: Cli) -> None:
    """wait --json exits 124 on timeout and still prints the records' current state."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "slow")
    assert 124 == cli("wait", "slow", "--timeout", "100ms", "--json")
    records = json.loads(cli.out)
    assert (["slow"], ["queued"], list(RECORD_FIELDS)) == (
        [r["id"] for r in records], [r["state"] for r in records], list(records[0]))


def test_wait_bad_timeout_is_a_usage_error(cli: Cli) -> None:
    """--timeout must be a duration."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "w")
    assert 2 == cli("wait", "w", "--timeout", "soon")


def test_cancel_of_a_pending_job_writes_a_request(cli: Cli) -> None:
    """cancel: one cancel request next to the submission; prints what it asked."""
    cli("submit", "--agent", "shell", "--prompt", "x", "--id", "c1")
    doc = cli.json("cancel", "c1")
    assert ("c1", "queued", True) == (doc["job"], doc["state"], doc["requested"])
    assert 2 == len(cli.inbox())


def test_startup_log_without_any_startup(cli: Cli) -> None:
    """startup-log --json before batchd ever started: an empty array."""
    assert [] == cli.json("startup-log")


def test_jobs_state_must_be_a_job_state(cli: Cli) -> None:
    """--state takes only the contract's states."""
    assert 2 == cli("jobs", "--state", "sleeping")


def _break_queue(cli: Cli) -> Path:
    """Replace scheduler/wal by a plain file (after one submission); its path."""
    assert 0 == cli("submit", "--agent", "shell", "--prompt", "x", "--id", "j1")
    wal = cli.state / "scheduler" / "wal"
    wal.parent.mkdir(parents=True, exist_ok=True)
    wal.write_bytes(b"not a directory")
    return wal


@pytest.mark.parametrize("argv", [("jobs",), ("status", "j1"), ("wait", "j1"), ("batches",),
                                  ("stats",), ("output", "j1"), ("cancel", "j1")])
def test_unreadable_queue_is_an_error_not_an_empty_list(cli: Cli, argv: tuple[str, ...]) -> None:
    """A job queue that cannot be read: exit 1 naming it and why, never 'no jobs'."""
    wal = _break_queue(cli)
    assert (1, "", f"batchctl: cannot read the job queue at {wal}: it is not a directory\n") == (
        cli(*argv), cli.out, cli.err)


def test_unreadable_queue_is_degraded_in_status(cli: Cli) -> None:
    """status (no JOB) still answers, exit 0, and names the unreadable queue in degraded."""
    wal = _break_queue(cli)
    assert {"batchd": {"running": False, "pid": None}, "workers": [], "jobs": {},
            "degraded": [f"cannot read the job queue at {wal}: it is not a directory"],
            "paused": False} == (
        cli.json("status"))


def test_submit_refuses_when_the_queue_is_unreadable(cli: Cli) -> None:
    """submit cannot check duplicates against an unreadable queue: exit 1, nothing written."""
    wal = _break_queue(cli)
    before = cli.inbox()
    assert (1, f"batchctl: cannot read the job queue at {wal}: it is not a directory\n",
            before) == (cli("submit", "--agent", "shell", "--prompt", "y"), cli.err, cli.inbox())


def test_corrupt_startup_log_is_reported_and_left_in_place(cli: Cli) -> None:
    """A garbage startup-log.json: exit 1 with the documented message; batchctl moves nothing."""
    cli.state.mkdir(parents=True)
    log = cli.state / "startup-log.json"
    log.write_bytes(b"\x00garbage")
    assert 1 == cli("startup-log")
    assert cli.err.startswith("batchctl: startup-log.json is corrupt (not valid JSON: ")
    assert cli.err.endswith("); batchd moves it aside at its next start\n")
    assert (["startup-log.json"], b"\x00garbage") == (os.listdir(cli.state), log.read_bytes())


def test_callback_url_refusals_name_the_url_and_line(cli: Cli, tmp_path: Path) -> None:
    """A bad callback URL is exit 2 naming it (and, in a JSONL file, the line)."""
    assert 2 == cli("submit", "--agent", "shell", "--prompt", "x",
                    "--callback", "http://x:99999/")
    assert ("batchctl: callback URL 'http://x:99999/' has an invalid port: "
            "Port out of range 0-65535\n") == cli.err
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"agent":"shell","prompt":"a"}\n'
                    '{"agent":"shell","prompt":"b","callback":"https://exa mple.com/"}\n')
    assert 2 == cli("submit", "--from", str(jobs))
    assert (f"batchctl: {jobs}:2: callback URL 'https://exa mple.com/' contains whitespace "
            "or a control character\n", []) == (cli.err, cli.inbox())


def _tree(root: Path) -> list[tuple[str, bytes]]:
    """Every file under root with its bytes (what a refusal must leave as it was)."""
    return sorted((str(p.relative_to(root)), p.read_bytes())
                  for p in root.rglob("*") if p.is_file()) if root.exists() else []


#: A command-line byte that is not UTF-8 reaches Python as a lone surrogate ('\udcff').
X = "\udcff"


@pytest.mark.parametrize(("argv", "needle"), [
    (("submit", "--agent", "shell", "--prompt", X), "prompt is not valid UTF-8 text"),
    (("submit", "--agent", "shell", "--prompt", "x", "--batch", X),
     "batch is not valid UTF-8 text"),
    (("submit", "--agent", "shell", "--prompt", "x", "--label", f"k={X}"),
     "label 'k' is not valid UTF-8 text"),
    (("submit", "--agent", "shell", "--prompt", "x", "--callback", f"http://h/{X}"),
     "callback is not valid UTF-8 text"),
    (("submit", "--agent", "shell", "--prompt", "x", "--repo", X),
     "repos is not valid UTF-8 text"),
    (("submit", "--agent", X, "--prompt", "x"), "agent is not valid UTF-8 text"),
    (("submit", "--agent", "shell", "--prompt", "x", "--id", X), "invalid job id '\\udcff'"),
    (("submit", "--agent", "shell", "--prompt", "x", "--after", X),
     "after: '\\udcff' is not a job id"),
    (("submit", "--agent", "shell", "--prompt", "x", "--delay", "99999999999d"),
     "--delay: expected a duration of at most 36500d (100 years)"),
    (("submit", "--agent", "shell", "--prompt", "x", "--timeout", "99999999999999d"),
     "timeout: expected a duration of at most 36500d (100 years)"),
    (("submit", "--agent", "shell", "--prompt", "x", "--idle-timeout", "99999999999d"),
     "idle_timeout: expected a duration of at most 36500d (100 years)"),
    (("submit", "--agent", "shell", "--prompt", "x", "--not-before",
      "9999-12-31T23:59:59-01:00"), "--not-before: '9999-12-31T23:59:59-01:00' is not"),
    (("submit", "--agent", "shell", "--prompt", "x", "--not-before",
      "0001-01-01T00:00:00+01:00"), "--not-before: '0001-01-01T00:00:00+01:00' is not"),
    (("jobs", "--since", "99999999999d"), "at most 36500d"),
    (("jobs", "--batch", X), "--batch: '\\udcff' is not valid UTF-8 text"),
    (("jobs", "--agent", X), "--agent: '\\udcff' is not valid UTF-8 text"),
    (("jobs", "--label", f"k={X}"), "--label: 'k=\\udcff' is not valid UTF-8 text"),
    (("jobs", "--label", f"{X}=v"), "--label: '\\udcff=v' is not valid UTF-8 text"),
    (("status", X), "invalid job id '\\udcff'"),
    (("wait", "a", X), "invalid job id '\\udcff'"),
    (("wait", "a", "--timeout", "99999999999d"), "at most 36500d"),
    (("clean", "--older-than", "99999999999d"), "at most 36500d"),
    (("repo", "add", "r", "/srv/x.git", "--branch", X), "not a valid git branch name"),
    (("repo", "add", "r", f"/srv/{X}.git", "--branch", "main"), "URL not valid UTF-8 text"),
    (("repo", "add", X, "/srv/x.git"), "invalid repository name '\\udcff'"),
    (("callbacks", "retry", X), "invalid event id '\\udcff'"),
    (("token", "add", X, "--scope", "read"), "invalid token name '\\udcff'"),
])
def test_odd_arguments_exit_2_naming_what_and_change_nothing(
        cli: Cli, argv: tuple[str, ...], needle: str) -> None:
    """Non-UTF-8 bytes in any argument, durations past 100 years and instants past year 9999
    were tracebacks (UnicodeEncodeError, "year out of range"): each is exit 2 with a message
    naming the argument, and the state directory is left exactly as it was."""
    assert 0 == cli("submit", "--agent", "shell", "--prompt", "x", "--id", "a")
    before = _tree(cli.state)
    assert (2, True, "", before) == (cli(*argv), needle in cli.err, cli.out, _tree(cli.state))
    assert cli.err.startswith("batchctl: ") and "Traceback" not in cli.err
