"""The claude adaptor: command line, quiet env, the verdict and usage read from real Claude Code
2.1.332 output, and real runs against the strict fake."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from adaptors import claude
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

KEY = {"ANTHROPIC_API_KEY": "sk-ant-test"}


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "claude", "prompt": "-fix it", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def _report(stdout: str, stderr: str = "", exit_code: int = 0, base: Any = None,
            **spec: object) -> Any:
    state = fakekit.feed(claude.ADAPTOR, fakekit.fixture_bytes("claude", stdout)
                         if stdout else b"", stderr.encode())
    return claude.report(state, _spec(**spec), exit_code, base)


def test_argv_is_print_mode_stream_json_without_permission_prompts() -> None:
    """A plain spec: `claude -p --output-format stream-json --verbose
    --dangerously-skip-permissions`, and no prompt in argv (it comes on stdin)."""
    assert ["/bin/claude", "-p", "--output-format", "stream-json", "--verbose",
            "--dangerously-skip-permissions"] == claude.build_argv(_spec(), "/bin/claude")


def test_argv_carries_model_resume_and_extra_args() -> None:
    """model -> --model, resume_session -> --resume, args last."""
    argv = claude.build_argv(_spec(model="opus", resume_session="abc", args=["--max-turns", "3"]),
                             "claude")
    assert ["--model", "opus", "--resume", "abc", "--max-turns", "3"] == argv[6:]


def test_env_is_quiet_and_bounded_and_sandboxed_only_as_root() -> None:
    """No nonessential traffic, updater, telemetry or error reports; 3 retries; IS_SANDBOX=1
    forced only when the agent runs as uid 0."""
    quiet = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
             "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "CLAUDE_CODE_MAX_RETRIES": "3"}
    assert quiet == claude.env(_spec(), 0) == claude.env(_spec(), 1000)
    assert ({"IS_SANDBOX": "1"}, {}) == (claude.forced_env(_spec(), 0),
                                         claude.forced_env(_spec(), 1000))


def test_success_report_from_captured_output() -> None:
    """The captured success: no error, the session, usage 11 in / 7 out, its cost, 1 turn,
    and the session total kept for a later resume."""
    report = _report("success.stdout")
    assert (None, "f6ed0bbd-a2b6-472c-8d38-ff4bca11b1c2") == (report.error, report.session_id)
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.000184, "turns": 1} \
        == report.usage
    assert {"cost_usd": 0.00018399999999999997} == report.totals


def test_a_401_is_an_error_even_though_subtype_says_success() -> None:
    """The captured 401: result subtype "success" but is_error true: its text is the error."""
    assert "Invalid API key · Fix external API key" == _report("auth401.stdout").error


def test_not_logged_in_is_an_error() -> None:
    """No credentials: the is_error result "Not logged in · Please run /login"."""
    assert "Not logged in · Please run /login" == _report("nokey.stdout").error


def test_an_assistant_auth_error_without_result_is_the_error() -> None:
    """A run cut after the synthetic assistant message (no result): its text is the error."""
    lines = [line for line in fakekit.fixture_lines("claude", "auth401.stdout")
             if b'"type":"result"' not in line and b'"type": "result"' not in line]
    state = ParseState()
    for line in lines:
        claude.parse_line(line, state)
    assert "Invalid API key · Fix external API key" \
        == claude.report(state, _spec(), 1, None).error


def test_error_subtype_names_its_errors() -> None:
    """subtype error_during_execution: the first entry of `errors` is the message."""
    state = ParseState()
    claude.parse_line(b'{"type":"result","subtype":"error_during_execution","is_error":true,'
                      b'"errors":["No conversation found with session ID: x"]}', state)
    assert "No conversation found with session ID: x" \
        == claude.report(state, _spec(), 1, None).error


def test_without_a_result_the_stderr_message_is_the_error() -> None:
    """The captured root refusal: no event at all, exit 1, its stderr line is the error."""
    refusal = fakekit.fixture_bytes("claude", "root_refusal.stderr").decode()
    assert ("--dangerously-skip-permissions cannot be used with root/sudo privileges for "
            "security reasons") == _report("", refusal, 1).error


def test_resumed_cost_is_this_runs_not_the_sessions_total() -> None:
    """The captured resume: total_cost_usd doubled (cumulative) but the run's own cost is
    model_usage_since_last_result's; without it, total minus the resumed job's total."""
    assert 0.000184 == _report("resume.stdout", resume_of="j0",
                               resume_session="s").usage["cost_usd"]
    state = ParseState()
    claude.parse_line(b'{"type":"result","subtype":"success","is_error":false,'
                      b'"total_cost_usd":0.5,"usage":{"input_tokens":3,"output_tokens":2}}',
                      state)
    resumed = _spec(resume_of="j0", resume_session="s")
    assert 0.2 == claude.report(state, resumed, 0, {"cost_usd": 0.3}).usage["cost_usd"]
    assert None is claude.report(state, resumed, 0, None).usage["cost_usd"]


def test_failed_result_renders_as_error_not_success() -> None:
    """`[result] error, ...` for an is_error result, then its text."""
    state = ParseState()
    claude.parse_line(b'{"type":"result","subtype":"success","is_error":true,"num_turns":1,'
                      b'"result":"Invalid API key"}', state)
    assert ["[result] error, 1 turns\n", "Invalid API key\n"] == claude._result(
        state.data["result"], ParseState())


def test_parse_renders_tool_use_retries_and_session() -> None:
    """init -> [session]; assistant tool_use -> [tool]; api_retry -> [retry]."""
    state = ParseState()
    init = b'{"type":"system","subtype":"init","session_id":"s-1","model":"m"}'
    assert ["[session] s-1 (model m)\n"] == claude.parse_line(init, state)
    line = (b'{"type":"assistant","message":{"content":[{"type":"text","text":"hi"},'
            b'{"type":"tool_use","id":"t","name":"Bash","input":{"command":"ls -la"}}]}}')
    assert ["hi\n", "[tool] Bash: ls -la\n"] == claude.parse_line(line, state)
    retry = (b'{"type":"system","subtype":"api_retry","attempt":1,"max_retries":3,'
             b'"error_status":401,"error":"authentication_failed"}')
    assert ["[retry] attempt 1/3: authentication_failed 401\n"] \
        == claude.parse_line(retry, state)
    assert "s-1" == state.session_id


def test_parse_passes_non_json_lines_through() -> None:
    """A stray non-JSON line on stdout is kept as text, not dropped."""
    assert ["not json\n"] == claude.parse_line(b"not json", ParseState())


def test_real_run_prompt_on_stdin_from_a_file_and_sandboxed_as_root(tmp_path: Path) -> None:
    """Against the strict fake (as root here): the prompt arrives byte for byte from a
    regular file on stdin, IS_SANDBOX=1 (replacing an inherited "yes", which claude refuses)
    lets it skip permissions, the run completes."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "c1", adaptor="claude",
                           prompt=fakekit.TRICKY_PROMPT, command=str(cli),
                           env={**KEY, "FAKE_RECORD": str(record)})
    inherited = {**os.environ, "IS_SANDBOX": "yes"}    # a value claude does not accept
    assert 0 == fakekit.run_adaptor(job, env=inherited).returncode
    result = fakekit.result(job)
    assert (0, None, None) == (result["exit_code"], result["reason"], result["agent_error"])
    assert fakekit.TRICKY_PROMPT.encode() == fakekit.recorded_prompt(record)
    seen = fakekit.recorded(record)
    assert ("file", "1") == (seen["stdin"], seen["env"]["IS_SANDBOX"])
    assert claude.build_argv(fakekit.spec_of(job), str(cli))[1:] == seen["argv"]
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.000184, "turns": 1} \
        == result["usage"]
    lines = fakekit.output(job).decode().splitlines()
    assert lines[0].startswith(f"[session] {result['session_id']} (model claude-opus-5-5)")
    assert ['MOCK-REPLY: say hi there "quoted" -dash', "é✓", "[result] success, 1 turns, "
            "0.2s, $0.0002"] == lines[1:]


def test_real_run_401_fails_naming_the_agents_message(tmp_path: Path) -> None:
    """The fake replays the captured 401: reason `agent error: Invalid API key · ...`."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "c401", adaptor="claude", prompt="p",
                           command=str(cli), env={**KEY, "FAKE_SCENARIO": "auth401"})
    assert 1 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert ("agent error: Invalid API key · Fix external API key", 1) \
        == (result["reason"], result["exit_code"])


def test_operator_env_wins_over_the_adaptor_defaults(tmp_path: Path) -> None:
    """An agent `env` IS_SANDBOX="" (the operator's choice) is kept: claude refuses as root."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "cr", adaptor="claude", prompt="p",
                           command=str(cli), env={**KEY, "IS_SANDBOX": "",
                                                  "CLAUDE_CODE_MAX_RETRIES": "9",
                                                  "FAKE_RECORD": str(record)})
    assert 1 == fakekit.run_adaptor(job).returncode
    assert ("agent error: --dangerously-skip-permissions cannot be used with root/sudo "
            "privileges for security reasons") == fakekit.result(job)["reason"]
    assert not record.exists()


def test_real_resume_continues_the_session(tmp_path: Path) -> None:
    """A second job with resume_session = the first's session id: `--resume ID` accepted
    by the fake (it knows the session), the same session reported."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    state = tmp_path / "state"
    first = fakekit.make_job(state, "r1", adaptor="claude", prompt="one", command=str(cli),
                             env=KEY)
    assert 0 == fakekit.run_adaptor(first).returncode
    session = fakekit.result(first)["session_id"]
    second = fakekit.make_job(state, "r2", adaptor="claude", prompt="two", command=str(cli),
                              env=KEY, resume_session=session, resume_of="r1")
    assert 0 == fakekit.run_adaptor(second).returncode
    assert (session, None) == (fakekit.result(second)["session_id"],
                               fakekit.result(second)["reason"])


def test_unknown_resume_id_fails_with_claudes_message(tmp_path: Path) -> None:
    """A session the CLI does not know: exit 1, reason names claude's stderr message."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "rx", adaptor="claude", prompt="p",
                           command=str(cli), env=KEY, resume_session="nope")
    assert 1 == fakekit.run_adaptor(job).returncode
    assert "agent error: No conversation found with session ID: nope" \
        == fakekit.result(job)["reason"]


def test_an_operator_flag_claude_does_not_have_fails_like_claude(tmp_path: Path) -> None:
    """args ["--bogus"]: the strict fake answers as Claude Code does; the job says so."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "cb", adaptor="claude", prompt="p",
                           command=str(cli), env=KEY, args=["--bogus"])
    assert 1 == fakekit.run_adaptor(job).returncode
    assert "agent error: error: unknown option '--bogus'" == fakekit.result(job)["reason"]


def test_default_binary_is_found_on_path(tmp_path: Path) -> None:
    """command null: `claude` is looked up on the job's PATH."""
    fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "c2", adaptor="claude", prompt="p",
                           env={**KEY, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert None is fakekit.result(job)["reason"]
