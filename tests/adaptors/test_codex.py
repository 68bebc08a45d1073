"""The codex adaptor: its command line, its exec --json rendering, a real run against a fake."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import codex
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "codex", "prompt": "fix", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_exec_json_with_workspace_write_sandbox() -> None:
    """`codex exec --json --skip-git-repo-check --sandbox workspace-write -- PROMPT`."""
    assert ["codex", "exec", "--json", "--skip-git-repo-check", "--sandbox",
            "workspace-write", "--", "fix"] == codex.build_argv(_spec(), "codex")


def test_argv_resume_puts_subcommand_after_exec_options() -> None:
    """resume_session -> `... resume <id> -- PROMPT`, with --model and args before it."""
    assert ["--model", "o3", "-c", "x=1", "resume", "th-1", "--", "fix"] \
        == codex.build_argv(_spec(model="o3", resume_session="th-1", args=["-c", "x=1"]),
                            "codex")[6:]


def test_command_item_without_started_event_still_shows_the_call() -> None:
    """A completed command_execution never announced by item.started shows call + result."""
    line = (b'{"type":"item.completed","item":{"id":"i","type":"command_execution",'
            b'"command":"make","aggregated_output":"boom","exit_code":2}}')
    assert ["[tool] shell: make\n", "[tool error] (exit 2) boom\n"] \
        == codex.parse_line(line, ParseState())


def test_legacy_item_type_field_is_read() -> None:
    """Older builds name the kind `item_type` / `assistant_message`; still rendered."""
    line = (b'{"type":"item.completed",'
            b'"item":{"id":"i","item_type":"assistant_message","text":"ok"}}')
    assert ["ok\n"] == codex.parse_line(line, ParseState())


def test_real_run_against_fake_codex(tmp_path: Path) -> None:
    """Output rendered, events raw, thread_id is the session id, argv as built."""
    cli = fakekit.install_cli(tmp_path / "bin", "codex")
    record = tmp_path / "argv.json"
    job = fakekit.make_job(tmp_path / "state", "x1", adaptor="codex", prompt="update a",
                           command=str(cli), resume_session="old-thread",
                           env={"FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert "67e55044-10b1-426f-9247-bb680e5fe0c8" == fakekit.result(job)["session_id"]
    assert [
        "[session] 67e55044-10b1-426f-9247-bb680e5fe0c8",
        "[tool] shell: bash -lc ls",
        "[tool result] (exit 0) a.txt",
        "  b.txt",
        "[edit] update a.txt",
        "Updated a.txt.",
        "[turn completed] 1200 tokens in, 345 out",
    ] == fakekit.output(job).decode().splitlines()
    assert fakekit.fake_lines("fake_codex.py", tmp_path) == fakekit.events(job)
    argv = fakekit.recorded(record)["argv"]
    assert ["resume", "old-thread", "--", "update a"] == argv[-4:]
    assert codex.build_argv(fakekit.spec_of(job), str(cli))[1:] == argv
