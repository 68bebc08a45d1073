"""The gemini adaptor: command line, the verdict and usage read from real Gemini CLI 0.61.0
output, and real runs against the strict fake (which refuses an untrusted folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from adaptors import gemini
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

KEY = {"GEMINI_API_KEY": "test-key"}


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "gemini", "prompt": "-list", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def _report(stdout: str | None, stderr: str | None = None, exit_code: int = 0) -> Any:
    state = fakekit.feed(gemini.ADAPTOR,
                         fakekit.fixture_bytes("gemini", stdout) if stdout else b"",
                         fakekit.fixture_bytes("gemini", stderr) if stderr else b"")
    return gemini.report(state, _spec(), exit_code, None)


def test_argv_is_headless_stream_json_yolo_and_trusting_the_workspace() -> None:
    """`gemini --output-format stream-json --yolo --skip-trust`; the prompt is not in argv."""
    assert ["gemini", "--output-format", "stream-json", "--yolo", "--skip-trust"] \
        == gemini.build_argv(_spec(), "gemini")


def test_argv_model_resume_args() -> None:
    """model -> --model, resume_session -> --resume, args last."""
    assert ["--model", "gemini-2.5-pro", "--resume", "s-1", "--debug"] == gemini.build_argv(
        _spec(model="gemini-2.5-pro", resume_session="s-1", args=["--debug"]), "gemini")[5:]


def test_success_report_from_captured_output() -> None:
    """The captured success: no error, init's session id, the stats' 22 in / 14 out (the
    router's classifier call included), no cost, no turn count."""
    report = _report("success.stdout", "success.stderr")
    assert (None, "6ceefffa-7c1f-4b82-99b7-21989bd7792b") == (report.error, report.session_id)
    assert {"input_tokens": 22, "output_tokens": 14, "cost_usd": None, "turns": None} \
        == report.usage


def test_api_error_result_names_code_and_message() -> None:
    """The captured 401 (exit 145): the result's `[API Error: {json}]` as code + message."""
    assert ("API error 401: Request had invalid authentication credentials. Expected OAuth 2 "
            "access token, login cookie or other valid authentication credential. See "
            "https://developers.google.com/identity/sign-in/web/devconsole-project.") \
        == _report("auth401.stdout", "auth401.stderr", 145).error


def test_no_result_untrusted_folder_names_geminis_message() -> None:
    """The captured exit 55: no event; the first stderr line that is not a start-up
    warning (ANSI colour removed) is the error."""
    error = _report(None, "untrusted.stderr", 55).error
    assert error is not None
    assert error.startswith("Gemini CLI is not running in a trusted directory. To proceed, "
                            "either use `--skip-trust`")


def test_no_result_missing_key_names_geminis_message() -> None:
    """The captured exit 41: "When using Gemini API, you must specify the GEMINI_API_KEY
    environment variable."."""
    assert ("When using Gemini API, you must specify the GEMINI_API_KEY environment "
            "variable.") == _report(None, "nokey.stderr", 41).error


def test_non_api_error_message_is_kept_as_is() -> None:
    """A result error that is not an API error keeps its own message."""
    state = ParseState()
    gemini.parse_line(b'{"type":"result","status":"error","error":{"type":"FatalTurnLimited",'
                      b'"message":"Reached max session turns"}}', state)
    assert "Reached max session turns" == gemini.report(state, _spec(), 53, None).error


def test_parse_renders_deltas_tools_and_result() -> None:
    """Assistant deltas run together; the next event starts a new line; tools as one line."""
    state = ParseState()
    assert ["Listing "] == gemini.parse_line(
        b'{"type":"message","role":"assistant","content":"Listing ","delta":true}', state)
    assert ["\n", "[tool] run_shell_command: ls\n"] == gemini.parse_line(
        b'{"type":"tool_use","tool_name":"run_shell_command","parameters":{"command":"ls"}}',
        state)
    assert ["[result] success, 3 tokens\n"] == gemini.parse_line(
        b'{"type":"result","status":"success","stats":{"total_tokens":3}}', state)


def test_fake_refuses_an_untrusted_folder_without_skip_trust(tmp_path: Path) -> None:
    """The strict fake, as the real CLI: no --skip-trust, exit 55 and its message."""
    cli = fakekit.install_cli(tmp_path / "bin", "gemini")
    done = subprocess.run([str(cli), "--output-format", "stream-json", "--yolo"],
                          input=b"hi", capture_output=True, cwd=tmp_path, check=False,
                          env={"PATH": "/usr/bin:/bin", **KEY})
    assert 55 == done.returncode
    assert b"Gemini CLI is not running in a trusted directory" in done.stderr


def test_real_run_prompt_exact_and_usage(tmp_path: Path) -> None:
    """Against the strict fake: trusted by --skip-trust, the prompt byte for byte from the
    prompt file on stdin, usage and session recorded."""
    cli = fakekit.install_cli(tmp_path / "bin", "gemini")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "g1", adaptor="gemini",
                           prompt=fakekit.TRICKY_PROMPT, command=str(cli),
                           env={**KEY, "FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert (0, None) == (result["exit_code"], result["reason"])
    assert (fakekit.TRICKY_PROMPT.encode(), "file") \
        == (fakekit.recorded_prompt(record), fakekit.recorded(record)["stdin"])
    assert {"input_tokens": 22, "output_tokens": 14, "cost_usd": None, "turns": None} \
        == result["usage"]
    assert gemini.build_argv(fakekit.spec_of(job), str(cli))[1:] \
        == fakekit.recorded(record)["argv"]
    assert 'MOCK-REPLY: say hi there "quoted" -dash\né✓\n[result] success' in \
        fakekit.output(job).decode()


def test_real_run_401_fails_with_exit_145_naming_the_api_error(tmp_path: Path) -> None:
    """The fake replays the captured 401 (exit 145): failed, reason names the API error."""
    cli = fakekit.install_cli(tmp_path / "bin", "gemini")
    job = fakekit.make_job(tmp_path / "state", "g401", adaptor="gemini", prompt="p",
                           command=str(cli), env={**KEY, "FAKE_SCENARIO": "auth401"})
    assert 145 == fakekit.run_adaptor(job).returncode
    assert fakekit.result(job)["reason"].startswith(
        "agent error: API error 401: Request had invalid authentication credentials.")


def test_resume_in_the_same_folder_continues_elsewhere_fails(tmp_path: Path) -> None:
    """Sessions are per folder: resumed in the first job's workspace the fake accepts it;
    in another workspace it exits 42 and the reason says why."""
    cli = fakekit.install_cli(tmp_path / "bin", "gemini")
    state, ws = tmp_path / "state", tmp_path / "ws"
    first = fakekit.make_job(state, "r1", adaptor="gemini", prompt="one", command=str(cli),
                             env=KEY, workspace=ws)
    assert 0 == fakekit.run_adaptor(first).returncode
    session = fakekit.result(first)["session_id"]
    same = fakekit.make_job(state, "r2", adaptor="gemini", prompt="two", command=str(cli),
                            env=KEY, workspace=ws, resume_session=session, resume_of="r1")
    assert (0, session) == (fakekit.run_adaptor(same).returncode,
                            fakekit.result(same)["session_id"])
    other = fakekit.make_job(state, "r3", adaptor="gemini", prompt="three", command=str(cli),
                             env=KEY, resume_session=session, resume_of="r1")
    assert 42 == fakekit.run_adaptor(other).returncode
    assert ("agent error: Error resuming session: No previous sessions found for this "
            "project.") == fakekit.result(other)["reason"]
