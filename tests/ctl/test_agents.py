"""`batchctl agents` (supervisor.ctl.agents): each agent's binary, version and whether it is
found, as a JSON array or a table; versions cached in the state dir."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from supervisor.ctl import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

CONFIG = """\
state_dir: {state}
agents:
  claude: {{env: {{PATH: "{bin}"}}}}
  review: {{adaptor: gemini, command: {bin}/gemini, user: nobody, max_concurrent: 2}}
  kiro: {{adaptor: q, env: {{PATH: "{bin}"}}}}
  gone: {{adaptor: codex, command: /opt/none/codex}}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose agents find the strict fakes (claude, gemini, kiro-cli) or nothing."""
    bin_dir = tmp_path / "bin"
    for name in ("claude", "gemini"):
        fakekit.install_cli(bin_dir, name)
    fakekit.install_cli(bin_dir, "kiro-cli", "fake_q.py")
    config = tmp_path / "batchd.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state", bin=bin_dir))
    return config, bin_dir


def _json(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert 0 == main(["-c", str(config), "agents", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, list)
    return doc


def test_agents_json_lists_every_agent_with_its_binary_and_version(
        setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """One record per agent (built-ins too), by name: the resolved binary and the version
    its `--version` gives; a missing binary is found false with null command and version;
    `q` runs kiro-cli when there is no q; max_concurrent is the agent's own cap."""
    config, bin_dir = setup
    by_name = {r["name"]: r for r in _json(config, capsys)}
    assert ["aider", "claude", "codex", "gemini", "gone", "kiro", "opencode", "q", "review",
            "shell"] == sorted(by_name)
    assert {"name": "claude", "adaptor": "claude", "command": str(bin_dir / "claude"),
            "version": "2.1.332", "found": True, "user": None,
            "max_concurrent": None} == by_name["claude"]
    assert ("gemini", str(bin_dir / "gemini"), "0.61.0", True, "nobody", 2) == tuple(
        by_name["review"][k] for k in ("adaptor", "command", "version", "found", "user",
                                       "max_concurrent"))
    assert (str(bin_dir / "kiro-cli"), "1.19.7") \
        == (by_name["kiro"]["command"], by_name["kiro"]["version"])
    assert (None, None, False) == tuple(by_name["gone"][k]
                                        for k in ("command", "version", "found"))
    assert ("/bin/sh", True) == (by_name["shell"]["command"], by_name["shell"]["found"])


def test_versions_are_asked_once_per_binary(setup: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    """A second `agents` reads the cached version: the binary is not run again (a claude
    that now fails `--version` still shows the cached one while its mtime and size stay)."""
    config, bin_dir = setup
    _json(config, capsys)
    wrapper = bin_dir / "claude"
    stat = wrapper.stat()
    original = wrapper.read_text()
    wrapper.write_text(original.replace("exec", "exit 9; exec", 1)[: len(original)])
    os.utime(wrapper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert wrapper.stat().st_size == stat.st_size
    assert "2.1.332" == {r["name"]: r for r in _json(config, capsys)}["claude"]["version"]
    assert (tmp_path / "state" / "agent-versions.json").exists()


def test_agents_table(setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: a table, a missing binary shown as `(name not found)`."""
    config, _ = setup
    assert 0 == main(["-c", str(config), "agents"])
    lines = capsys.readouterr().out.splitlines()
    assert ["NAME", "ADAPTOR", "FOUND", "VERSION", "COMMAND", "USER"] == lines[0].split()
    gone = next(line for line in lines if line.startswith("gone "))
    assert ["gone", "codex", "no", "-", "(/opt/none/codex", "not", "found)", "-"] \
        == gone.split()
