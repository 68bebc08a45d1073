"""The gemini adaptor: its command line, its stream-json rendering, a real run against a fake."""

from __future__ import annotations

import sys
from pathlib import Path

from adaptors import gemini
from adaptors._render import ParseState
from adaptors._spec import JobSpec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _spec(**fields: object) -> JobSpec:
    base = {"id": "j", "adaptor": "gemini", "prompt": "-do it", "workspace": "/ws"}
    return parse_spec({**base, **fields}, Path("/state/jobs/j"))


def test_argv_is_headless_stream_json_yolo() -> None:
    """The prompt rides on `--prompt=` (safe for a leading dash); output is stream-json."""
    assert ["gemini", "--prompt=-do it", "--output-format", "stream-json", "--yolo"] \
        == gemini.build_argv(_spec(), "gemini")


def test_argv_model_resume_and_args() -> None:
    """model -> --model, resume_session -> --resume, extra args appended."""
    assert ["--model", "gemini-2.5-pro", "--resume", "latest", "--debug"] \
        == gemini.build_argv(_spec(model="gemini-2.5-pro", resume_session="latest",
                                   args=["--debug"]), "g")[5:]


def test_deltas_are_joined_and_next_event_starts_a_line() -> None:
    """Assistant deltas append without newlines; a following tool call starts a new line."""
    state = ParseState()
    out = gemini.parse_line(b'{"type":"message","role":"assistant","content":"a","delta":true}',
                            state)
    out += gemini.parse_line(b'{"type":"message","role":"assistant","content":"b","delta":true}',
                             state)
    out += gemini.parse_line(
        b'{"type":"tool_use","tool_name":"glob","tool_id":"1","parameters":{"pattern":"*.py"}}',
        state)
    assert "ab\n[tool] glob: *.py\n" == "".join(out)


def test_user_messages_are_not_echoed() -> None:
    """The user's own prompt message is not repeated in the output."""
    assert [] == gemini.parse_line(b'{"type":"message","role":"user","content":"p"}',
                                   ParseState())


def test_real_run_against_fake_gemini(tmp_path: Path) -> None:
    """Output is rendered, events kept raw, the init session id lands in the result."""
    cli = fakekit.install_cli(tmp_path / "bin", "gemini")
    record = tmp_path / "argv.json"
    job = fakekit.make_job(tmp_path / "state", "g1", adaptor="gemini", prompt="list files",
                           command=str(cli), env={"FAKE_RECORD": str(record)})
    assert 0 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert ("c0ffee00-1234-4abc-9def-000000000001", 0, None) \
        == (result["session_id"], result["exit_code"], result["reason"])
    assert [
        "[session] c0ffee00-1234-4abc-9def-000000000001 (model gemini-2.5-pro)",
        "Listing the files.",
        "[tool] run_shell_command: ls -la",
        "[tool result] a.txt",
        "  b.txt",
        "[tool] read_file: /ws/missing.txt",
        "[tool error] no such file",
        "[warning] loop detected",
        "Two files.",
        "[result] success, 321 tokens, 2 tool calls, 1.5s",
    ] == fakekit.output(job).decode().splitlines()
    assert fakekit.fake_lines("fake_gemini.py", tmp_path) == fakekit.events(job)
    assert gemini.build_argv(fakekit.spec_of(job), str(cli))[1:] \
        == fakekit.recorded(record)["argv"]
