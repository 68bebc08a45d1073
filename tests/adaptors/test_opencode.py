"""The opencode adaptor: command line (never the prompt), the verdict and summed usage read from
real opencode 1.18.33 output, and real runs against the strict fake (which mangles argv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from adaptors import opencode
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "opencode", "prompt": "-refactor", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def _report(stdout: str, exit_code: int = 0) -> Any:
    state = fakekit.feed(opencode.ADAPTOR, fakekit.fixture_bytes("opencode", stdout))
    return opencode.report(state, _spec(), exit_code, None)


def test_argv_is_run_json_auto_without_the_prompt() -> None:
    """`opencode run --format json --auto`: no message argument (stdin carries it)."""
    assert ["opencode", "run", "--format", "json", "--auto"] \
        == opencode.build_argv(_spec(), "opencode")


def test_argv_model_session_args() -> None:
    """model -> --model, resume_session -> --session, args last."""
    assert ["--model", "anthropic/claude-sonnet-4", "--session", "ses_1", "--agent", "build"] \
        == opencode.build_argv(_spec(model="anthropic/claude-sonnet-4", resume_session="ses_1",
                                     args=["--agent", "build"]), "opencode")[5:]


def test_env_turns_off_updates_sharing_and_downloads() -> None:
    """OPENCODE_DISABLE_AUTOUPDATE, _SHARE, _LSP_DOWNLOAD."""
    assert {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"} == opencode.env(_spec(), 0)


def test_success_report_from_captured_output() -> None:
    """The captured success: the session, 11/7 tokens, cost 0 (a model without prices),
    one step."""
    report = _report("success.stdout")
    assert (None, "ses_dc4972782ffe381uH0MrzEu2aF") == (report.error, report.session_id)
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.0, "turns": 1} \
        == report.usage


def test_usage_is_summed_over_steps_not_the_last_step() -> None:
    """Two steps: tokens (cache and reasoning included) and cost are the sums."""
    state = ParseState()
    for line in (
        b'{"type":"step_finish","sessionID":"ses_1","part":{"reason":"tool-calls","tokens":'
        b'{"input":10,"output":5,"reasoning":2,"cache":{"read":100,"write":1}},"cost":0.01}}',
        b'{"type":"step_finish","sessionID":"ses_1","part":{"reason":"stop","tokens":'
        b'{"input":20,"output":6,"reasoning":0,"cache":{"read":50,"write":0}},"cost":0.02}}',
    ):
        opencode.parse_line(line, state)
    assert {"input_tokens": 181, "output_tokens": 13, "cost_usd": 0.03, "turns": 2} \
        == opencode.report(state, _spec(), 0, None).usage


def test_error_event_is_the_verdict() -> None:
    """The captured 401: the error event's data.message."""
    assert ("Incorrect API key provided: sk-mock. You can find your API key at "
            "https://platform.openai.com/account/api-keys.") == _report("auth401.stdout", 1).error


def test_stderr_error_without_events() -> None:
    """An unknown session: no event, `Error: Session not found` (ANSI removed)."""
    state = fakekit.feed(opencode.ADAPTOR, b"", b"\x1b[91m\x1b[1mError: \x1b[0mSession not found\n")
    assert "Error: Session not found" == opencode.report(state, _spec(), 1, None).error


def test_fake_mangles_an_argv_message_as_the_real_cli(tmp_path: Path) -> None:
    """Why the prompt is never argv: the fake (as opencode 1.18) quotes a message with a
    space and escapes its quotes."""
    cli = fakekit.install_cli(tmp_path / "bin", "opencode")
    record = tmp_path / "rec.json"
    subprocess.run([str(cli), "run", "--format", "json", 'say "hi" there'],
                   stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp_path, check=True,
                   env={"PATH": "/usr/bin:/bin", "FAKE_RECORD": str(record),
                        "FAKE_HOME": str(tmp_path)})
    assert b'"say \\"hi\\" there"' == fakekit.recorded_prompt(record)


def test_real_run_prompt_exact_via_stdin(tmp_path: Path) -> None:
    """Against the strict fake: the prompt byte for byte from the prompt file, no message
    argument, usage and session recorded."""
    cli = fakekit.install_cli(tmp_path / "bin", "opencode")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "o1", adaptor="opencode",
                           prompt=fakekit.TRICKY_PROMPT, command=str(cli),
                           env={"FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert (fakekit.TRICKY_PROMPT.encode(), "file") \
        == (fakekit.recorded_prompt(record), fakekit.recorded(record)["stdin"])
    assert (None, {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.0, "turns": 1}) \
        == (result["reason"], result["usage"])
    assert result["session_id"].startswith("ses_")


def test_real_run_401_and_resume(tmp_path: Path) -> None:
    """The 401 fails naming the message; a resumed job passes --session and is accepted."""
    cli = fakekit.install_cli(tmp_path / "bin", "opencode")
    state = tmp_path / "state"
    bad = fakekit.make_job(state, "o401", adaptor="opencode", prompt="p", command=str(cli),
                           env={"FAKE_SCENARIO": "auth401"})
    assert 1 == fakekit.run_adaptor(bad).returncode
    assert fakekit.result(bad)["reason"].startswith(
        "agent error: Incorrect API key provided: sk-mock.")
    first = fakekit.make_job(state, "o2", adaptor="opencode", prompt="one", command=str(cli))
    assert 0 == fakekit.run_adaptor(first).returncode
    session = fakekit.result(first)["session_id"]
    second = fakekit.make_job(state, "o3", adaptor="opencode", prompt="two", command=str(cli),
                              resume_session=session, resume_of="o2")
    assert (0, session) == (fakekit.run_adaptor(second).returncode,
                            fakekit.result(second)["session_id"])
