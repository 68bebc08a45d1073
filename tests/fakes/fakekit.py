"""Test harness for the adaptor and launcher tests: job folders, fake CLIs, real adaptor runs.

Fake CLIs are Python scripts without a shebang; `install_cli` puts a small /bin/sh wrapper
named after the real tool in a bin folder, which execs them with this interpreter's absolute
path (so nothing depends on `python3` being on PATH). They are strict: see _fakecommon.py.
`make_job` gives every job FAKE_HOME=<state>/fakehome, where the fakes keep their sessions.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adaptors._spec import JobSpec, parse_spec
from supervisor.state.layout import JOB_SPEC, RESULT, SENTINEL, Layout, read_record, write_record

FAKES = Path(__file__).resolve().parent
REPO = FAKES.parent.parent
PYTHON = sys.executable

T = TypeVar("T")


def install_cli(bin_dir: Path, name: str, fake: str | None = None) -> Path:
    """A wrapper `bin_dir/name` running tests/fakes/<fake or fake_<name>>.py (FAKE_PROG
    tells the fake the name it was called by)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = FAKES / (fake or f"fake_{name.replace('-', '_')}.py")
    wrapper = bin_dir / name
    wrapper.write_text(f"#!/bin/sh\nFAKE_PROG='{name}' exec '{PYTHON}' '{script}' \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def make_job(state_dir: Path, job_id: str, *, adaptor: str, prompt: str,
             workspace: Path | None = None, **fields: Any) -> Path:
    """Write jobs/<id>/spec.json (as the scheduler does) and return the job folder."""
    layout = Layout(state_dir)
    job_dir = layout.job_dir(job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    ws = workspace or state_dir / "workspaces" / job_id
    ws.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "id": job_id, "agent": adaptor, "adaptor": adaptor, "command": None, "args": [],
        "env": {"FAKE_HOME": str(state_dir / "fakehome")}, "prompt": prompt, "model": None,
        "workspace": str(ws),
        "job_dir": str(job_dir), "timeout": None, "heartbeat_interval": 0.2,
        "kill_grace": 1.0, "user": None, "resume_session": None,
        "state_dir": str(state_dir),
    }
    env = dict(spec["env"])
    env.update(fields.pop("env", None) or {})
    spec.update(fields, env=env)
    write_record(JOB_SPEC, layout.job_spec(job_id), spec)
    return job_dir


def adaptor_cmd(job_dir: Path) -> list[str]:
    return [PYTHON, "-m", "adaptors.run", str(job_dir)]


def run_adaptor(job_dir: Path, *, timeout: float = 60.0,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m adaptors.run JOB_DIR` to its end, in a session of its own."""
    return subprocess.run(adaptor_cmd(job_dir), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, start_new_session=True, cwd=REPO, env=env,
                          check=False)


def start_adaptor(job_dir: Path) -> subprocess.Popen[bytes]:
    """Start the adaptor in a session of its own (as the launcher would) and return at once.

    Pair with `kill_group` in a `finally` (or the module's cleanup fixture) so a failing test
    leaves no job behind."""
    return subprocess.Popen(adaptor_cmd(job_dir), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=REPO)


def kill_group(pgid: int | None) -> None:
    """SIGKILL what is left of a job's process group (test cleanup; gone already is fine)."""
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return


def wait_for(check: Callable[[], T | None], *, timeout: float = 30.0,
             what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (generous deadline: tests run loaded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _files(job_dir: Path) -> Layout:
    return Layout(job_dir.parent.parent)


def spec_of(job_dir: Path) -> JobSpec:
    """The job's spec as the adaptor reads it."""
    record = read_record(JOB_SPEC, _files(job_dir).job_spec(job_dir.name), owner=False)
    assert isinstance(record, dict), record
    return parse_spec(record, job_dir)


def result(job_dir: Path) -> dict[str, Any]:
    record = read_record(RESULT, _files(job_dir).job_result(job_dir.name), owner=False)
    assert isinstance(record, dict), record
    return record


def sentinel(job_dir: Path) -> dict[str, Any] | None:
    record = read_record(SENTINEL, _files(job_dir).job_sentinel(job_dir.name), owner=False)
    return record if isinstance(record, dict) else None


def wait_result(job_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    path = _files(job_dir).job_result(job_dir.name)
    wait_for(path.exists, timeout=timeout, what=f"{path}")
    return result(job_dir)


def output(job_dir: Path) -> bytes:
    """The job's output so far (empty before the adaptor created it)."""
    path = _files(job_dir).job_output(job_dir.name)
    return path.read_bytes() if path.exists() else b""


def events(job_dir: Path) -> list[bytes]:
    return _files(job_dir).job_events(job_dir.name).read_bytes().splitlines()


def recorded(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def recorded_prompt(path: Path) -> bytes:
    """The prompt a fake CLI took (as its model would get it), from its FAKE_RECORD."""
    data = recorded(path)
    assert isinstance(data.get("prompt_b64"), str), data
    return base64.b64decode(data["prompt_b64"])


def recorded_list(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    assert isinstance(data, list)
    return [str(item) for item in data]


#: A prompt no shell quoting, argv joining or trimming survives unchanged: a leading dash,
#: quotes of both kinds, $ and backticks, a backslash, a tab, newlines, non-ASCII.
TRICKY_PROMPT = ('-say hi there "quoted" \'single\' $HOME `date` \\ back\n'
                 '\tline two é✓ 日本語\n\n-- last line\n')


def big_prompt(size: int = 100 * 1024) -> str:
    """A prompt of about `size` bytes of varied lines (the 100 KB case)."""
    lines = []
    n = 0
    while sum(len(line.encode()) + 1 for line in lines) < size:
        lines.append(f'{n:05d} "q" \'s\' $VAR `x` é✓ -{"abcdefghij" * 6}')
        n += 1
    return "\n".join(lines) + "\n"


def feed(adaptor: Any, stdout: bytes, stderr: bytes = b"") -> Any:
    """The ParseState after `adaptor` read a captured run: each stdout line through
    parse_line (structured CLIs) or note_line (plain ones), each stderr line through
    note_line."""
    from adaptors._render import ParseState

    state = ParseState()
    for line in stdout.splitlines():
        if adaptor.parse_line is not None:
            adaptor.parse_line(line, state)
        elif adaptor.note_line is not None:
            adaptor.note_line(line, state)
    for line in stderr.splitlines():
        if adaptor.note_line is not None:
            adaptor.note_line(line, state)
    return state


def fixture_bytes(cli: str, name: str) -> bytes:
    """A captured output the fakes replay (fixtures/<cli>/<name>), as bytes."""
    return (FAKES / "fixtures" / cli / name).read_bytes()


def fixture_lines(cli: str, name: str) -> list[bytes]:
    """The lines of a captured output the fakes replay (fixtures/<cli>/<name>)."""
    return (FAKES / "fixtures" / cli / name).read_bytes().splitlines()


def process_group(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group `pgid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")
