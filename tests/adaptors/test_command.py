"""The command adaptor: `/bin/sh -c PROMPT`, exactly the bytes written, env and cwd."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import command
from adaptors._spec import parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def test_argv_is_sh_dash_c_with_options_first() -> None:
    """args are shell options, placed before `-c PROMPT`."""
    spec = parse_spec({"id": "j", "adaptor": "command", "prompt": "echo hi", "workspace": "/w",
                       "args": ["-e"]}, Path("/s/jobs/j"))
    assert ["/bin/sh", "-e", "-c", "echo hi"] == command.build_argv(spec, "/bin/sh")


def test_output_is_exactly_the_bytes_written_to_stdout_and_stderr(tmp_path: Path) -> None:
    """Interleaved stdout/stderr, no trailing newline, non-UTF-8 bytes: all kept as is."""
    job = fakekit.make_job(tmp_path / "state", "b1", adaptor="command",
                           prompt=r"printf 'a'; printf 'b' >&2; printf '\377\000c'")
    assert 0 == fakekit.run_adaptor(job).returncode
    assert b"ab\xff\x00c" == fakekit.output(job)
    assert not (job / "events.jsonl").exists()


def test_job_sees_its_env_and_runs_in_the_workspace(tmp_path: Path) -> None:
    """cwd = workspace; BATCHD_JOB_ID/DIR/WORKSPACE and the spec env are set."""
    ws = tmp_path / "ws"
    job = fakekit.make_job(tmp_path / "state", "e1", adaptor="command", workspace=ws,
                           env={"GREETING": "hello"},
                           prompt='echo "$PWD|$BATCHD_JOB_ID|$BATCHD_JOB_DIR|$BATCHD_WORKSPACE'
                                  '|$GREETING"')
    fakekit.run_adaptor(job)
    assert f"{ws}|e1|{job}|{ws}|hello\n".encode() == fakekit.output(job)


def test_exit_status_is_passed_through(tmp_path: Path) -> None:
    """`exit 7`: result exit_code 7, adaptor exit status 7, no reason."""
    job = fakekit.make_job(tmp_path / "state", "x7", adaptor="command", prompt="exit 7")
    assert 7 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert (7, None, None, False) == (result["exit_code"], result["signal"], result["reason"],
                                      result["timed_out"])


def test_shell_options_from_args_apply(tmp_path: Path) -> None:
    """args ["-e"]: the script stops at the first failing command."""
    job = fakekit.make_job(tmp_path / "state", "se", adaptor="command", args=["-e"],
                           prompt="echo one; false; echo never")
    assert 1 == fakekit.run_adaptor(job).returncode
    assert b"one\n" == fakekit.output(job)


def test_custom_command_binary(tmp_path: Path) -> None:
    """`command` replaces /bin/sh (here bash, whose $BASH_VERSION is set)."""
    job = fakekit.make_job(tmp_path / "state", "bash", adaptor="command", command="bash",
                           prompt='test -n "$BASH_VERSION" && echo bash')
    assert 0 == fakekit.run_adaptor(job).returncode
    assert b"bash\n" == fakekit.output(job)
