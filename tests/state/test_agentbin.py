"""Agent binaries (state.agentbin): which file an agent runs, why a job of it is refused, and
its `--version`, cached per binary (path, mtime, size) in agent-versions.json."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.config import AgentConfig
from supervisor.state.agentbin import (
    Located,
    locate,
    refusal,
    resolve_binary,
    version_of,
    versions,
)
from supervisor.state.layout import AGENT_VERSIONS, Layout, read_record


def _exe(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_resolve_binary_names_paths_and_relative_paths(tmp_path: Path) -> None:
    """A name is looked up on PATH; an absolute path is checked; a relative path needs the
    workspace (cwd), without one it is not resolvable."""
    exe = _exe(tmp_path / "bin" / "tool")
    assert str(exe) == resolve_binary("tool", path=str(exe.parent), cwd=None)
    assert str(exe) == resolve_binary(str(exe), path="", cwd=None)
    assert str(exe) == resolve_binary("bin/tool", path="", cwd=str(tmp_path))
    assert (None, None) == (resolve_binary("bin/tool", path="", cwd=None),
                            resolve_binary("nope", path=str(exe.parent), cwd=None))


def test_locate_default_binary_on_the_agents_own_path(tmp_path: Path) -> None:
    """No `command`: the adaptor's binary on the agent's env PATH (not the caller's)."""
    exe = _exe(tmp_path / "own" / "claude")
    agent = AgentConfig(adaptor="claude", env=(("PATH", str(exe.parent)),))
    assert Located("claude", str(exe)) == locate(agent, {"PATH": "/usr/bin:/bin"})
    assert Located("claude", None) == locate(AgentConfig(adaptor="claude"), {"PATH": ""})


def test_q_falls_back_to_kiro_cli(tmp_path: Path) -> None:
    """The q adaptor runs `q`, else `kiro-cli` (its successor) when there is no q."""
    kiro = _exe(tmp_path / "bin" / "kiro-cli")
    env = {"PATH": str(kiro.parent)}
    assert Located("kiro-cli", str(kiro)) == locate(AgentConfig(adaptor="q"), env)
    q = _exe(tmp_path / "bin" / "q")
    assert Located("q", str(q)) == locate(AgentConfig(adaptor="q"), env)


def test_locate_an_explicit_command(tmp_path: Path) -> None:
    """`command` is what is looked for, even when the adaptor's default exists."""
    _exe(tmp_path / "bin" / "gemini")
    agent = AgentConfig(adaptor="gemini", command="gemini-nightly")
    assert Located("gemini-nightly", None) == locate(agent, {"PATH": str(tmp_path / "bin")})


def test_refusal_of_aider_without_a_model() -> None:
    """aider needs `model` or `--model` in args; other adaptors are never refused."""
    why = refusal(AgentConfig(adaptor="aider"))
    assert why is not None and why.startswith("has no model")
    assert None is refusal(AgentConfig(adaptor="aider", model="openai/gpt-4o"))
    assert None is refusal(AgentConfig(adaptor="aider", args=("--model=openai/gpt-4o",)))
    assert None is refusal(AgentConfig(adaptor="claude"))


def test_version_of_takes_the_version_number_of_the_first_line(tmp_path: Path) -> None:
    """`2.1.332 (Claude Code)` -> 2.1.332; codex's WARNING line is skipped; a failing or
    silent binary has no version."""
    claude = _exe(tmp_path / "claude", "echo '2.1.332 (Claude Code)'")
    codex = _exe(tmp_path / "codex", "echo 'WARNING: x'; echo 'codex-cli 0.171.0'")
    broken = _exe(tmp_path / "broken", "echo oops >&2; exit 3")
    silent = _exe(tmp_path / "silent", "exit 0")
    env = {"PATH": "/usr/bin:/bin"}
    assert ("2.1.332", "0.171.0", None, None) == (
        version_of(str(claude), env), version_of(str(codex), env),
        version_of(str(broken), env), version_of(str(silent), env))


def test_versions_are_cached_until_the_binary_changes(tmp_path: Path) -> None:
    """The second ask does not run the binary; a changed binary (mtime, size) is asked
    again; the cache is a record the reader can check."""
    runs = tmp_path / "runs"
    exe = _exe(tmp_path / "bin" / "aider", f"echo x >> {runs}; echo 'aider 0.86.2'")
    layout = Layout(tmp_path / "state")
    env = {"PATH": "/usr/bin:/bin"}
    assert {str(exe): "0.86.2"} == versions(layout, {str(exe): env})
    assert {str(exe): "0.86.2"} == versions(layout, {str(exe): env})
    assert 1 == len(runs.read_text().splitlines())
    _exe(exe, f"echo x >> {runs}; echo 'aider 0.87.0-dev'")
    os.utime(exe, ns=(1, 2))
    assert {str(exe): "0.87.0-dev"} == versions(layout, {str(exe): env})
    assert 2 == len(runs.read_text().splitlines())
    record = read_record(AGENT_VERSIONS, layout.agent_versions, owner=False)
    assert isinstance(record, dict)
    assert "0.87.0-dev" == record["binaries"][str(exe)]["version"]


def test_versions_drop_gone_binaries_and_replace_a_corrupt_cache(tmp_path: Path) -> None:
    """A binary that no longer exists leaves the cache; a corrupt cache file is moved aside
    (batchctl owns it) and written anew."""
    layout = Layout(tmp_path / "state")
    env = {"PATH": "/usr/bin:/bin"}
    gone = _exe(tmp_path / "gone", "echo 1.0")
    versions(layout, {str(gone): env})
    gone.unlink()
    kept = _exe(tmp_path / "kept", "echo 2.0")
    versions(layout, {str(kept): env})
    record = read_record(AGENT_VERSIONS, layout.agent_versions, owner=False)
    assert isinstance(record, dict)
    assert [str(kept)] == list(record["binaries"])
    layout.agent_versions.write_text("{not json")
    assert {str(kept): "2.0"} == versions(layout, {str(kept): env})
    assert any(".corrupted." in p.name for p in layout.root.iterdir())
