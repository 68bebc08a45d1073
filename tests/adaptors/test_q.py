"""The q adaptor: command line, q's `error:` lines as the verdict, kiro-cli when q is absent, and
real runs against the strict fake (built from the q source: q could not be installed)."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import q
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "q", "prompt": "-h means help?", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_chat_no_interactive_trust_all_tools_prompt_on_stdin() -> None:
    """`q chat --no-interactive --trust-all-tools`, no INPUT argument."""
    assert ["q", "chat", "--no-interactive", "--trust-all-tools"] == q.build_argv(_spec(), "q")


def test_argv_model_and_resume_flag() -> None:
    """model -> --model; a resumed job (resume_of) -> --resume (per-folder conversation)."""
    assert ["--model", "claude-sonnet-4", "--resume", "--agent", "dev"] \
        == q.build_argv(_spec(model="claude-sonnet-4", resume_of="j0",
                              args=["--agent", "dev"]), "q")[4:]


def test_error_line_with_nonzero_exit_is_the_verdict() -> None:
    """`error: You are not logged in...` and exit 1: that message."""
    state = fakekit.feed(q.ADAPTOR, b"error: You are not logged in, please log in with q login\n")
    assert "You are not logged in, please log in with q login" \
        == q.report(state, _spec(), 1, None).error
    assert None is q.report(state, _spec(), 0, None).error


def test_kiro_trouble_is_an_error_even_with_exit_0() -> None:
    """kiro-cli's "Kiro is having trouble responding right now" fails the job."""
    state = ParseState()
    q.note_line(b"Kiro is having trouble responding right now", state)
    assert "Kiro is having trouble responding right now" \
        == q.report(state, _spec(), 0, None).error


def test_real_run_output_and_trimmed_prompt(tmp_path: Path) -> None:
    """stderr and stdout land in the output in the order written; the prompt is stdin, as
    q trims it; no session id, no usage."""
    fakekit.install_cli(tmp_path / "bin", "q")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "q1", adaptor="q", prompt="  count files\n",
                           env={"FAKE_RECORD": str(record),
                                "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert b"Using tool: execute_bash\n> Read 11 bytes of prompt.\n" == fakekit.output(job)
    result = fakekit.result(job)
    assert (None, None, None) == (result["session_id"], result["usage"], result["reason"])
    assert (b"count files", "file") \
        == (fakekit.recorded_prompt(record), fakekit.recorded(record)["stdin"])


def test_kiro_cli_is_run_when_there_is_no_q(tmp_path: Path) -> None:
    """Only kiro-cli on the PATH: the q adaptor runs it (the same chat flags)."""
    fakekit.install_cli(tmp_path / "bin", "kiro-cli", "fake_q.py")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "k1", adaptor="q", prompt="hi",
                           env={"FAKE_RECORD": str(record),
                                "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert "kiro-cli" == fakekit.recorded(record)["env"]["FAKE_PROG"]


def test_not_logged_in_fails_naming_qs_message(tmp_path: Path) -> None:
    """The fake's nologin run (exit 1): reason `agent error: You are not logged in...`."""
    cli = fakekit.install_cli(tmp_path / "bin", "q")
    job = fakekit.make_job(tmp_path / "state", "q2", adaptor="q", prompt="hi",
                           command=str(cli), env={"FAKE_SCENARIO": "nologin"})
    assert 1 == fakekit.run_adaptor(job).returncode
    assert "agent error: You are not logged in, please log in with q login" \
        == fakekit.result(job)["reason"]


def test_resume_continues_the_folders_conversation(tmp_path: Path) -> None:
    """A resumed job in the same workspace: `--resume`, the fake finds the conversation."""
    cli = fakekit.install_cli(tmp_path / "bin", "q")
    state, ws = tmp_path / "state", tmp_path / "ws"
    first = fakekit.make_job(state, "q3", adaptor="q", prompt="one", command=str(cli),
                             workspace=ws)
    assert 0 == fakekit.run_adaptor(first).returncode
    second = fakekit.make_job(state, "q4", adaptor="q", prompt="two", command=str(cli),
                              workspace=ws, resume_of="q3")
    assert 0 == fakekit.run_adaptor(second).returncode
    assert fakekit.output(second).endswith(b"> Resuming a conversation of 1 turns.\n"
                                           b"Read 3 bytes of prompt.\n")
