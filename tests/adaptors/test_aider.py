"""The aider adaptor: its command line and a real run (plain text straight to the output)."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import aider
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "aider", "prompt": "--add docs", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_message_yes_always_no_pretty_no_stream() -> None:
    """The prompt is `--message=PROMPT` (a leading dash stays a value)."""
    assert ["aider", "--message=--add docs", "--yes-always", "--no-pretty", "--no-stream"] \
        == aider.build_argv(_spec(), "aider")


def test_argv_model_resume_args() -> None:
    """model -> --model, resume -> --restore-chat-history, args last."""
    assert ["--model", "gpt-4o", "--restore-chat-history", "hello.js"] \
        == aider.build_argv(_spec(model="gpt-4o", resume_session="any", args=["hello.js"]),
                            "aider")[5:]


def test_real_run_output_is_exactly_what_aider_wrote(tmp_path: Path) -> None:
    """stdout and stderr reach the output file byte for byte; no events.jsonl; no session."""
    cli = fakekit.install_cli(tmp_path / "bin", "aider")
    record = tmp_path / "argv.json"
    job = fakekit.make_job(tmp_path / "state", "a1", adaptor="aider", prompt="add hello",
                           command=str(cli), env={"FAKE_RECORD": str(record), "FAKE_EXIT": "1"})
    assert 1 == fakekit.run_adaptor(job).returncode
    assert (1, None) == (fakekit.result(job)["exit_code"], fakekit.result(job)["session_id"])
    assert (b"Aider v0.86.0\nModel: fake-model\nCan't initialize prompt toolkit: no terminal\n"
            b"Applied edit to hello.js\nCommit 1a2b3c4 add hello\n") == fakekit.output(job)
    assert not (job / "events.jsonl").exists()
    assert aider.build_argv(fakekit.spec_of(job), str(cli))[1:] \
        == fakekit.recorded(record)["argv"]
