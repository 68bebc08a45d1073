"""Shell completion (ctl.completion): scripts generated from the parser, run by a real bash."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import load
from supervisor.ctl import COMMANDS, build_parser
from supervisor.ctl.completion import cmd_complete, script
from supervisor.ctl.out import Ctx
from supervisor.state.layout import Layout
from supervisor.state.submission import write_submission

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A config with a state dir holding two jobs, and a `batchctl` on a PATH of its own
    (as the console script would be); (config, bin folder)."""
    config = tmp_path / "batchd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n"
                      "repositories: {app: {url: /srv/git/app.git}}\n")
    write_submission(Layout(tmp_path / "state"), [
        {"id": "job-one", "agent": "shell", "prompt": "x"},
        {"id": "job-two", "agent": "shell", "prompt": "x", "batch": "nightly"}])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "batchctl"
    wrapper.write_text(f"#!/bin/sh\ncd {ROOT} && exec {sys.executable} -m supervisor.ctl "
                       '"$@"\n')
    wrapper.chmod(0o755)
    return config, bin_dir


def complete(setup: tuple[Path, Path], line: str) -> list[str]:
    """What bash's completion function offers for `line` (the cursor at its end)."""
    config, bin_dir = setup
    words = line.split(" ")
    script_file = bin_dir.parent / "complete.bash"
    script_file.write_text(script("bash", build_parser()))
    words_arr = " ".join(f"'{w}'" for w in words)
    program = (f"source {script_file}; COMP_WORDS=({words_arr}); "
               f"COMP_CWORD={len(words) - 1}; _batchctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "BATCHD_CONFIG": str(config)}
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    return sorted(w for w in done.stdout.split("\n") if w)


def test_bash_completes_commands_options_and_choices(setup: tuple[Path, Path]) -> None:
    """Commands, a command's options and fixed choices come from the parser itself."""
    assert ["start", "startup-log", "stats", "status", "stop"] == complete(setup, "batchctl st")
    assert ["--after", "--after-any", "--agent"] == complete(setup, "batchctl submit --a")
    assert ["api", "callbacks", "locks", "reaper", "scheduler"] == complete(setup,
                                                                  "batchctl restart ")
    assert ["running"] == complete(setup, "batchctl jobs --state ru")


def test_bash_completes_values_from_the_state_dir(setup: tuple[Path, Path]) -> None:
    """Job ids, agents, repositories and batches come from the config and the state dir
    (through `batchctl __complete`)."""
    assert ["job-one", "job-two"] == complete(setup, "batchctl status job")
    assert ["claude", "codex"] == complete(setup, "batchctl submit --agent c")
    assert ["app"] == complete(setup, "batchctl submit --repo ")
    assert ["nightly"] == complete(setup, "batchctl batch ")
    assert ["job-one", "job-two"] == complete(setup, "batchctl submit --after ")


def test_bash_completes_the_agent_commands_and_flags(setup: tuple[Path, Path]) -> None:
    """`agents`, `submit --resume JOB` (a job id) and `--idle-timeout` come from the parser
    like every other command and flag."""
    assert ["agents"] == complete(setup, "batchctl ag")
    assert ["--id", "--idle-timeout"] == complete(setup, "batchctl submit --i")
    assert ["--repo", "--resume", "--retries"] == complete(setup, "batchctl submit --re")
    assert ["job-one", "job-two"] == complete(setup, "batchctl submit --resume job")


def test_every_command_is_in_every_script() -> None:
    """The scripts are generated from the parser: each command appears in each of them;
    the hidden __complete command in none."""
    parser = build_parser()
    for shell in ("bash", "zsh", "fish"):
        text = script(shell, parser)
        missing = [c for c in COMMANDS if c not in text]
        assert ([], False) == (missing, " __complete)" in text), shell


def test_complete_lists_nothing_rather_than_failing(tmp_path: Path) -> None:
    """A state dir that cannot be read completes to nothing (a shell must never show an
    error while completing)."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "scheduler").write_text("not a folder")
    cfg = load(None, env={"BATCHD_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)})
    ctx = Ctx(cfg=cfg, layout=Layout(cfg.state_dir), out=io.StringIO(), err=io.StringIO())
    assert 0 == cmd_complete(ctx, "jobs")
    assert isinstance(ctx.out, io.StringIO)
    assert "" == ctx.out.getvalue()
