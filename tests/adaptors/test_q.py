"""The q adaptor: its command line and a real run (plain text straight to the output)."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import q
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "q", "prompt": "-h means help?", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_chat_no_interactive_trust_all_tools() -> None:
    """`q chat --no-interactive --trust-all-tools -- PROMPT`."""
    assert ["q", "chat", "--no-interactive", "--trust-all-tools", "--", "-h means help?"] \
        == q.build_argv(_spec(), "q")


def test_argv_model_and_resume_flag() -> None:
    """model -> --model; any resume_session -> --resume (Q resumes per directory)."""
    assert ["--model", "claude-sonnet-4", "--resume", "--agent", "dev", "--", "-h means help?"] \
        == q.build_argv(_spec(model="claude-sonnet-4", resume_session="x",
                              args=["--agent", "dev"]), "q")[4:]


def test_real_run_against_fake_q(tmp_path: Path) -> None:
    """stderr and stdout land in the output in the order written; default binary on PATH."""
    fakekit.install_cli(tmp_path / "bin", "q")
    record = tmp_path / "argv.json"
    job = fakekit.make_job(tmp_path / "state", "q1", adaptor="q", prompt="count files",
                           env={"FAKE_RECORD": str(record),
                                "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert b"Using tool: execute_bash\n> The workspace has 2 files.\n" == fakekit.output(job)
    assert None is fakekit.result(job)["session_id"]
    assert q.build_argv(fakekit.spec_of(job), "q")[1:] == fakekit.recorded(record)["argv"]
