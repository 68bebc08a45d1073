"""The codex adaptor: command line, the verdict and usage (cumulative per thread) read from real
Codex CLI 0.171.0 output, and real runs against the strict fake."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from adaptors import codex
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

HEAD = ["exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false",
        "--disable", "unbounded_connection_retries"]


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "codex", "prompt": "-x", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def _report(stdout: str, exit_code: int = 0, base: Any = None, stderr: bytes = b"",
            **spec: object) -> Any:
    state = fakekit.feed(codex.ADAPTOR, fakekit.fixture_bytes("codex", stdout)
                         if stdout else b"", stderr)
    return codex.report(state, _spec(**spec), exit_code, base)


def test_argv_is_exec_json_quiet_bounded_prompt_from_stdin() -> None:
    """`codex exec --json ... -`: bypass, no update check, no analytics, bounded retries;
    `-` makes stdin the prompt."""
    assert ["codex", *HEAD, "-"] == codex.build_argv(_spec(), "codex")


def test_argv_resume_comes_after_every_option() -> None:
    """model, args, then `resume SESSION -` (exec resume rejects some exec options)."""
    assert ["codex", *HEAD, "--model", "o3", "-s", "read-only", "resume", "t-1", "-"] \
        == codex.build_argv(_spec(model="o3", args=["-s", "read-only"],
                                  resume_session="t-1"), "codex")


def test_success_report_from_captured_output() -> None:
    """The captured success: thread id, usage 11/7, 1 turn, no cost; totals kept."""
    report = _report("success.stdout")
    assert (None, "01a23b68-a498-7b92-87ac-54b53fa00dc8") == (report.error, report.session_id)
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": None, "turns": 1} \
        == report.usage
    assert {"input_tokens": 11, "output_tokens": 7} == report.totals


def test_resumed_usage_is_this_runs_share_of_the_thread() -> None:
    """The captured resume reports 22/14 for the thread: minus the resumed job's totals
    (11/7) it is 11/7; with those totals gone it is unknown, never double counted."""
    resumed = {"resume_of": "j0", "resume_session": "t"}
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": None, "turns": 1} \
        == _report("resume.stdout", base={"input_tokens": 11, "output_tokens": 7},
                   **resumed).usage
    assert {"input_tokens": None, "output_tokens": None, "cost_usd": None, "turns": 1} \
        == _report("resume.stdout", **resumed).usage
    assert {"input_tokens": 22, "output_tokens": 14} == _report("resume.stdout",
                                                                **resumed).totals


def test_turn_failed_is_the_error_not_the_retry_notices() -> None:
    """The captured 401: `error` events are retry notices; turn.failed's message is it."""
    assert ("unexpected status 401 Unauthorized: Incorrect API key provided: sk-mock. You can "
            "find your API key at https://platform.openai.com/account/api-keys., url: "
            "http://127.0.0.1:43335/v1/responses, request id: req_mock") \
        == _report("auth401.stdout", 1).error


def test_offline_turn_failed() -> None:
    """The captured unreachable endpoint: "Connection failed: error sending request"."""
    assert "Connection failed: error sending request" == _report("offline.stdout", 1).error


def test_no_turn_at_all_uses_the_last_error_event() -> None:
    """Error events and no turn.completed nor turn.failed: the last error is the verdict."""
    state = ParseState()
    codex.parse_line(b'{"type":"error","message":"Reconnecting... 1/5"}', state)
    codex.parse_line(b'{"type":"error","message":"stream disconnected"}', state)
    assert "stream disconnected" == codex.report(state, _spec(), 1, None).error


def test_stderr_error_line_without_events() -> None:
    """An unknown resume id: no event; codex's `Error: ...` line is the verdict."""
    message = (b"Error: thread/resume: thread/resume failed: no rollout found for thread id "
               b"x (code -32600)\n")
    assert message.decode().strip() == _report("", 1, stderr=message).error


def test_item_error_is_a_warning_not_a_verdict() -> None:
    """An item of type error (an unknown model's metadata) renders as a warning and the
    completed turn is a success."""
    state = ParseState()
    assert ["[warning] Model metadata not found\n"] == codex.parse_line(
        b'{"type":"item.completed","item":{"id":"i","type":"error",'
        b'"message":"Model metadata not found"}}', state)
    codex.parse_line(b'{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":1}}',
                     state)
    assert None is codex.report(state, _spec(), 0, None).error


def test_real_run_prompt_exact_then_resume_counts_only_its_turn(tmp_path: Path) -> None:
    """Against the strict fake: the prompt byte for byte from stdin (`-`), then a resumed
    job whose thread usage is cumulative reports only its own turn (via the first job's
    result.json)."""
    cli = fakekit.install_cli(tmp_path / "bin", "codex")
    state = tmp_path / "state"
    record = tmp_path / "rec.json"
    first = fakekit.make_job(state, "x1", adaptor="codex", prompt=fakekit.TRICKY_PROMPT,
                             command=str(cli), env={"FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(first).returncode
    assert (fakekit.TRICKY_PROMPT.encode(), "file") \
        == (fakekit.recorded_prompt(record), fakekit.recorded(record)["stdin"])
    thread = fakekit.result(first)["session_id"]
    second = fakekit.make_job(state, "x2", adaptor="codex", prompt="again", command=str(cli),
                              resume_session=thread, resume_of="x1")
    assert 0 == fakekit.run_adaptor(second).returncode
    result = fakekit.result(second)
    assert (thread, {"input_tokens": 11, "output_tokens": 7, "cost_usd": None, "turns": 1},
            {"input_tokens": 22, "output_tokens": 14}) \
        == (result["session_id"], result["usage"], result["usage_totals"])


def test_real_run_401_fails_naming_the_turn_failure(tmp_path: Path) -> None:
    """The fake replays the captured 401 (exit 1): reason names the turn's failure."""
    cli = fakekit.install_cli(tmp_path / "bin", "codex")
    job = fakekit.make_job(tmp_path / "state", "x401", adaptor="codex", prompt="p",
                           command=str(cli), env={"FAKE_SCENARIO": "auth401"})
    assert 1 == fakekit.run_adaptor(job).returncode
    assert fakekit.result(job)["reason"].startswith(
        "agent error: unexpected status 401 Unauthorized: Incorrect API key provided")


def test_an_option_exec_resume_lacks_fails_like_codex(tmp_path: Path) -> None:
    """The strict fake rejects `--last` before `resume` (an exec resume option only):
    clap's message and exit 2 reach the job."""
    cli = fakekit.install_cli(tmp_path / "bin", "codex")
    job = fakekit.make_job(tmp_path / "state", "xb", adaptor="codex", prompt="p",
                           command=str(cli), args=["--last"])
    assert 2 == fakekit.run_adaptor(job).returncode
    assert "agent error: error: unexpected argument '--last' found" \
        == fakekit.result(job)["reason"]
