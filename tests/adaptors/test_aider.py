"""The aider adaptor: command line, the verdict (aider exits 0 after an API error) and usage read
from real aider 0.86.2 output, and real runs against the strict fake."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from adaptors import aider
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

KEY = {"OPENAI_API_KEY": "sk-test"}


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "aider", "prompt": "--add docs", "workspace": "/ws",
            "model": "openai/gpt-4o"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def _report(stdout: str | bytes, exit_code: int = 0) -> Any:
    out = stdout if isinstance(stdout, bytes) else fakekit.fixture_bytes("aider", stdout)
    return aider.report(fakekit.feed(aider.ADAPTOR, out), _spec(), exit_code, None)


def test_argv_is_model_message_file_and_the_quiet_flags() -> None:
    """The model, the prompt file by absolute path, then every flag that keeps aider from
    asking, editing .gitignore or calling home."""
    assert ["aider", "--model", "openai/gpt-4o", "--message-file", "/state/jobs/j/prompt",
            "--yes-always", "--no-check-update", "--no-show-release-notes",
            "--analytics-disable", "--no-gitignore", "--no-show-model-warnings", "--no-pretty",
            "--no-fancy-input", "--no-detect-urls", "--no-stream"] \
        == aider.build_argv(_spec(), "aider")


def test_argv_resume_restores_the_chat_history() -> None:
    """A resumed job: --restore-chat-history; a history file elsewhere is named."""
    assert ["--restore-chat-history", "hello.js"] == aider.build_argv(
        _spec(resume_of="j0", resume_session="/ws/.aider.chat.history.md", args=["hello.js"]),
        "aider")[15:]
    assert ["--restore-chat-history", "--chat-history-file", "/else/h.md"] == aider.build_argv(
        _spec(resume_of="j0", resume_session="/else/h.md"), "aider")[15:]


def test_a_job_without_a_model_is_refused() -> None:
    """No model and no --model in args: refused (aider would start an OAuth login)."""
    assert aider.refuse(_spec(model=None)) is not None
    assert None is aider.refuse(_spec(model=None, args=["--model", "x/y"]))
    assert None is aider.refuse(_spec())


def test_env_no_price_download_no_browser() -> None:
    """LITELLM_LOCAL_MODEL_COST_MAP=True and BROWSER=true."""
    assert {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "BROWSER": "true"} == aider.env(_spec(), 0)


def test_success_report_from_captured_output() -> None:
    """The captured success: no error, 11 sent / 7 received, $0.000098, one call."""
    report = _report("success.stdout")
    assert None is report.error
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 9.8e-05, "turns": 1} \
        == report.usage


def test_a_401_is_an_error_although_aider_exits_0() -> None:
    """The captured 401 (exit 0): the litellm error line, its 80-column wrap joined."""
    assert ("litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API "
            "key provided: sk-mock. You can find your API key at "
            "https://platform.openai.com/account/api-keys.") == _report("auth401.stdout").error


def test_missing_key_is_an_error() -> None:
    """The captured run without OPENAI_API_KEY (exit 0): litellm's authentication error."""
    error = _report("nokey.stdout").error
    assert error is not None
    assert error.startswith("litellm.AuthenticationError: AuthenticationError: "
                            "OpenAIException - The api_key client option must be set")


def test_an_error_aider_retried_past_is_not_the_verdict() -> None:
    """A rate-limit line followed by a successful call: no error; the usage adds up both
    calls (k counts rounded as aider prints them)."""
    out = (b"litellm.RateLimitError: RateLimitError: slow down\nRetrying in 0.2 seconds...\n"
           b"Tokens: 2.6k sent, 120 received. Cost: $0.01 message, $0.01 session.\n"
           b"Tokens: 1k sent, 30 received. Cost: $0.002 message, $0.012 session.\n")
    report = _report(out)
    assert (None, {"input_tokens": 3600, "output_tokens": 150, "cost_usd": 0.012, "turns": 2}) \
        == (report.error, report.usage)


def test_missing_message_file_line_is_an_error() -> None:
    """`<path>: file not found error` (aider then exits 0 at stdin's end)."""
    assert "/x/prompt: file not found error" == _report(
        b"Aider v0.86.2\n/x/prompt: file not found error\n\n> ").error


def test_real_run_prompt_from_the_file_stdin_null(tmp_path: Path) -> None:
    """Against the strict fake: the prompt byte for byte from --message-file, stdin
    /dev/null, no .gitignore edit, the chat history reported as the session."""
    cli = fakekit.install_cli(tmp_path / "bin", "aider")
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "a1", adaptor="aider", workspace=ws,
                           prompt=fakekit.TRICKY_PROMPT, command=str(cli),
                           model="openai/gpt-4o", env={**KEY, "FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert (fakekit.TRICKY_PROMPT.encode(), "null") \
        == (fakekit.recorded_prompt(record), fakekit.recorded(record)["stdin"])
    assert (None, str(ws / ".aider.chat.history.md")) \
        == (result["reason"], result["session_id"])
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 9.8e-05, "turns": 1} \
        == result["usage"]
    assert not (ws / ".gitignore").exists()
    assert fakekit.output(job) == fakekit.fixture_bytes("aider", "success.stdout")


def test_real_run_401_exit_0_fails(tmp_path: Path) -> None:
    """The fake replays the captured 401 and exits 0: the job fails all the same."""
    cli = fakekit.install_cli(tmp_path / "bin", "aider")
    job = fakekit.make_job(tmp_path / "state", "a401", adaptor="aider", prompt="p",
                           command=str(cli), model="openai/gpt-4o",
                           env={**KEY, "FAKE_SCENARIO": "auth401"})
    assert 0 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert 0 == result["exit_code"]
    assert result["reason"].startswith("agent error: litellm.AuthenticationError:")


def test_no_model_is_refused_before_aider_runs(tmp_path: Path) -> None:
    """A spec without a model never starts aider (the fake would wait 300 s): bad_spec."""
    cli = fakekit.install_cli(tmp_path / "bin", "aider")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "anm", adaptor="aider", prompt="p",
                           command=str(cli), env={"FAKE_RECORD": str(record)})
    assert 2 == fakekit.run_adaptor(job, timeout=30).returncode
    assert fakekit.result(job)["reason"].startswith("bad_spec: aider needs a model")
    assert not record.exists()


def test_real_resume_restores_the_history(tmp_path: Path) -> None:
    """A resumed job in the same workspace: aider restores the first job's chat."""
    cli = fakekit.install_cli(tmp_path / "bin", "aider")
    state, ws = tmp_path / "state", tmp_path / "ws"
    first = fakekit.make_job(state, "h1", adaptor="aider", workspace=ws, prompt="first turn",
                             command=str(cli), model="openai/gpt-4o", env=KEY)
    assert 0 == fakekit.run_adaptor(first).returncode
    record = tmp_path / "rec.json"
    second = fakekit.make_job(state, "h2", adaptor="aider", workspace=ws, prompt="second",
                              command=str(cli), model="openai/gpt-4o",
                              env={**KEY, "FAKE_RECORD": str(record)}, resume_of="h1",
                              resume_session=fakekit.result(first)["session_id"])
    assert 0 == fakekit.run_adaptor(second).returncode
    assert "first turn" in fakekit.recorded(record)["restored"]
    assert b"Restored previous conversation history." in fakekit.output(second)


def test_parse_state_starts_empty() -> None:
    """No output at all: no error, no usage."""
    assert (None, None) == (aider.report(ParseState(), _spec(), 0, None).error,
                            aider.report(ParseState(), _spec(), 0, None).usage)
