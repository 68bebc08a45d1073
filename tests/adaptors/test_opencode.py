"""The opencode adaptor: its command line, its run --format json rendering, a real run."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import opencode
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "opencode", "prompt": "go", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_run_format_json_auto() -> None:
    """`opencode run --format json --auto -- PROMPT`."""
    assert ["opencode", "run", "--format", "json", "--auto", "--", "go"] \
        == opencode.build_argv(_spec(), "opencode")


def test_argv_model_and_session() -> None:
    """model -> --model provider/model, resume_session -> --session."""
    assert ["--model", "anthropic/claude", "--session", "ses_1", "--", "go"] \
        == opencode.build_argv(_spec(model="anthropic/claude", resume_session="ses_1"), "o")[5:]


def test_error_event_names_the_error() -> None:
    """An error event renders its name and message."""
    line = b'{"type":"error","sessionID":"s","error":{"name":"APIError","data":{"message":"429"}}}'
    assert ["[error] APIError: 429\n"] == opencode.parse_line(line, ParseState())


def test_intermediate_step_finish_is_silent() -> None:
    """step_finish with reason tool-calls is bookkeeping, not output."""
    line = b'{"type":"step_finish","sessionID":"s","part":{"reason":"tool-calls"}}'
    assert [] == opencode.parse_line(line, ParseState())


def test_real_run_against_fake_opencode(tmp_path: Path) -> None:
    """Output rendered, events raw, sessionID is the session id, argv as built."""
    cli = fakekit.install_cli(tmp_path / "bin", "opencode")
    record = tmp_path / "argv.json"
    job = fakekit.make_job(tmp_path / "state", "o1", adaptor="opencode", prompt="ls",
                           command=str(cli), model="anthropic/claude-sonnet",
                           env={"FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert "ses_494719016ffe85dkDMj0FPRbHK" == fakekit.result(job)["session_id"]
    assert [
        "[tool] bash: ls",
        "[tool result] a.txt",
        "  b.txt",
        "Two files: a.txt and b.txt.",
        "[result] done, 120 tokens in, 30 out, $0.0021",
    ] == fakekit.output(job).decode().splitlines()
    assert fakekit.fake_lines("fake_opencode.py", tmp_path) == fakekit.events(job)
    assert opencode.build_argv(fakekit.spec_of(job), str(cli))[1:] \
        == fakekit.recorded(record)["argv"]
