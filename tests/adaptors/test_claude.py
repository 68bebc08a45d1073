"""The claude adaptor: its command line, its stream-json rendering, a real run against a fake."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import claude
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "claude", "prompt": "-fix it", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_print_mode_stream_json_without_permission_prompts() -> None:
    """A plain spec gives `claude -p --output-format stream-json --verbose ...-- PROMPT`."""
    assert [
        "/bin/claude", "-p", "--output-format", "stream-json", "--verbose",
        "--dangerously-skip-permissions", "--", "-fix it",
    ] == claude.build_argv(_spec(), "/bin/claude")


def test_argv_carries_model_resume_and_extra_args_before_the_prompt() -> None:
    """model -> --model, resume_session -> --resume, args go after the flags, before `--`."""
    argv = claude.build_argv(_spec(model="opus", resume_session="abc", args=["--max-turns", "3"]),
                             "claude")
    assert ["--model", "opus", "--resume", "abc", "--max-turns", "3", "--", "-fix it"] \
        == argv[6:]


def test_parse_renders_tool_use_as_one_line_and_keeps_session() -> None:
    """An assistant tool_use renders `[tool] Bash: ls -la`; init gives the session id."""
    state = ParseState()
    init = b'{"type":"system","subtype":"init","session_id":"s-1","model":"m"}'
    assert ["[session] s-1 (model m)\n"] == claude.parse_line(init, state)
    line = (b'{"type":"assistant","message":{"content":[{"type":"text","text":"hi"},'
            b'{"type":"tool_use","id":"t","name":"Bash","input":{"command":"ls -la"}}]}}')
    assert ["hi\n", "[tool] Bash: ls -la\n"] == claude.parse_line(line, state)
    assert "s-1" == claude.ADAPTOR.session_id(state)


def test_parse_truncates_long_tool_results() -> None:
    """A tool_result of 20 lines shows the first 8 and says how many more there are."""
    content = "\\n".join(f"l{i}" for i in range(20))
    line = ('{"type":"user","message":{"content":[{"type":"tool_result","content":"'
            + content + '"}]}}').encode()
    (text,) = claude.parse_line(line, ParseState())
    assert text.startswith("[tool result] l0\n  l1\n")
    assert text.endswith("  l7\n  … (12 more lines)\n")


def test_parse_passes_non_json_lines_through() -> None:
    """A stray non-JSON line on stdout is kept as text, not dropped."""
    assert ["not json\n"] == claude.parse_line(b"not json", ParseState())


def test_real_run_against_fake_claude(tmp_path: Path) -> None:
    """The adaptor runs the fake, renders its events, keeps them raw, reports the session."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    record = tmp_path / "argv.json"
    job = fakekit.make_job(tmp_path / "state", "c1", adaptor="claude", prompt="list files",
                           model="sonnet", env={"FAKE_RECORD": str(record), "FAKE_EXIT": "3"},
                           command=str(cli))
    done = fakekit.run_adaptor(job)
    assert 3 == done.returncode
    result = fakekit.result(job)
    assert (3, None, None) == (result["exit_code"], result["signal"], result["reason"])
    assert "3f9f74a6-6b7c-4a3e-9e1d-2f1f0a9b8c7d" == result["session_id"]
    lines = fakekit.output(job).decode().splitlines()
    assert "warning: a line on stderr" in lines   # stderr: whole line, order vs stdout free
    lines.remove("warning: a line on stderr")
    assert [
        "[session] 3f9f74a6-6b7c-4a3e-9e1d-2f1f0a9b8c7d (model claude-sonnet-4-5)",
        "I will list the files.",
        "[tool] Bash: ls -la",
        "[tool result] file0.txt",
    ] == lines[:4]
    assert ["There are 12 files.", "[result] success, 2 turns, 2.3s, $0.0123"] == lines[-2:]
    assert fakekit.fake_lines("fake_claude.py", tmp_path) == fakekit.events(job)
    argv = fakekit.recorded(record)
    assert claude.build_argv(fakekit.spec_of(job), str(cli))[1:] == argv["argv"]
    assert ("c1", str(job)) == (argv["env"]["BATCHD_JOB_ID"], argv["env"]["BATCHD_JOB_DIR"])


def test_default_binary_is_found_on_path(tmp_path: Path) -> None:
    """command null: `claude` is looked up on the job's PATH."""
    fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "c2", adaptor="claude", prompt="p",
                           env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert 0 == fakekit.run_adaptor(job).returncode
    assert None is fakekit.result(job)["reason"]

