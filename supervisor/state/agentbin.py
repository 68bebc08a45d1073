"""Agent binaries: the file an agent's command names, its `--version` (cached), refusals.

Shared by the adaptors (which binary to run), `batchctl agents` (what is installed, which
version) and `batchd --check` (warn about a configured agent whose binary is missing), so
all three find the same file:

    locate(agent, env, cwd=None) -> Located       the command looked for and the file it names
    refusal(agent) -> str | None                  why no job of this agent may run
    versions(layout, found, env) -> {path: version}   `--version` of each binary, cached

An agent without `command` runs the first of its adaptor's binaries (config.ADAPTOR_COMMANDS)
found on the agent's PATH (its `env` PATH if it sets one, else the caller's). A command with
a `/` that is not absolute is relative to each job's workspace: only a job can resolve it.

The version cache, `<state_dir>/agent-versions.json` (layout.AGENT_VERSIONS), belongs to
batchctl (the one process kind that writes it): {binaries: {path: {mtime_ns, size,
version}}}. An entry is used only while the binary's mtime and size are unchanged, so an
upgrade is noticed at once; a binary that no longer exists is dropped when the file is next
written. Written with layout.write_record (temp file, fsync, rename, fsync folder): a crash
leaves the old cache or the new one. Two batchctl running at once may each write the whole
file; the last one wins and the other's new entries are asked again next time (a cache, so
nothing is lost but a `--version` run). A corrupt cache is read as empty and replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.config import ADAPTOR_COMMANDS, AgentConfig, Config
from supervisor.state.atomic import ensure_dir
from supervisor.state.layout import AGENT_VERSIONS, Layout, read_record, write_record

__all__ = [
    "VERSION_TIMEOUT",
    "Located",
    "agent_path",
    "agent_records",
    "locate",
    "refusal",
    "resolve_binary",
    "version_of",
    "versions",
]

#: Seconds a `--version` may take before the binary's version is reported unknown.
VERSION_TIMEOUT = 15.0

_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.]+)?")


def resolve_binary(command: str, *, path: str | None, cwd: str | None) -> str | None:
    """The executable `command` names (a name looked up on `path`, or a path relative to
    `cwd`), or None when there is none (or `cwd` is None for a relative path)."""
    if "/" in command:
        if os.path.isabs(command):
            full = command
        elif cwd is None:
            return None
        else:
            full = os.path.join(cwd, command)
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    return shutil.which(command, path=path)


def agent_path(agent: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The PATH an agent's binary is looked up on: its own `env` PATH, else `env`'s."""
    own = dict(agent.env).get("PATH")
    return own if own is not None else env.get("PATH")


@dataclass(frozen=True)
class Located:
    """Where an agent's binary is: the command looked for, and the file (None: not found)."""

    command: str
    path: str | None


def locate(agent: AgentConfig, env: Mapping[str, str], cwd: str | None = None) -> Located:
    """The binary a job of `agent` runs: its `command`, else the first of its adaptor's
    default binaries found on its PATH (the `q` adaptor: `q`, then `kiro-cli`)."""
    search = agent_path(agent, env)
    if agent.command is not None:
        return Located(agent.command, resolve_binary(agent.command, path=search, cwd=cwd))
    candidates = ADAPTOR_COMMANDS.get(agent.adaptor, (agent.adaptor,))
    for name in candidates:
        found = resolve_binary(name, path=search, cwd=cwd)
        if found is not None:
            return Located(name, found)
    return Located(candidates[0], None)


def _has_option(args: tuple[str, ...], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def refusal(agent: AgentConfig) -> str | None:
    """Why no job of `agent` may run (it is refused at submit), or None.

    aider without a model (neither `model` nor `--model` in `args`) starts an OpenRouter
    login flow that waits five minutes for a browser on localhost:8484 (aider 0.86)."""
    if agent.adaptor == "aider" and not agent.model and not _has_option(agent.args, "--model"):
        return ("has no model: aider without one starts an interactive OpenRouter login; "
                "set `model` (e.g. openai/gpt-4o) for this agent in the configuration")
    return None


def version_of(binary: str, env: Mapping[str, str],
               timeout: float = VERSION_TIMEOUT) -> str | None:
    """What `binary --version` says: the version number in its first line (the whole line
    when it has none), or None when it fails, says nothing or takes over `timeout`."""
    try:
        done = subprocess.run([binary, "--version"], env=dict(env), cwd="/",
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if done.returncode != 0:
        return None
    for stream in (done.stdout, done.stderr):
        for raw in stream.decode("utf-8", errors="replace").splitlines():
            line = raw.strip()
            if not line or line.startswith("WARNING"):
                continue
            match = _VERSION.search(line)
            return match.group(0) if match else line[:80]
    return None


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def versions(layout: Layout, found: Mapping[str, Mapping[str, str]],
             timeout: float = VERSION_TIMEOUT, *, owner: bool = True) -> dict[str, str | None]:
    """The version of each binary in `found` (path -> the env to run it with): from the
    cache while the file's mtime and size are unchanged, else by running `--version`
    (then the cache is rewritten, atomically, by its owner — batchctl; another reader,
    the api, only reads it)."""
    rec = read_record(AGENT_VERSIONS, layout.agent_versions, owner=owner)
    cached = rec.get("binaries") if isinstance(rec, dict) else None
    entries: dict[str, dict[str, object]] = {
        k: dict(v) for k, v in (cached or {}).items()
        if isinstance(k, str) and isinstance(v, dict)}
    out: dict[str, str | None] = {}
    changed = not isinstance(rec, dict)
    for path, env in found.items():
        stamp = _stamp(path)
        entry = entries.get(path)
        if (stamp is not None and entry is not None
                and (entry.get("mtime_ns"), entry.get("size")) == stamp):
            version = entry.get("version")
            out[path] = version if isinstance(version, str) else None
            continue
        out[path] = version_of(path, env, timeout)
        if stamp is not None:
            entries[path] = {"mtime_ns": stamp[0], "size": stamp[1], "version": out[path]}
            changed = True
    gone = [p for p in entries if _stamp(p) is None]
    for path in gone:
        del entries[path]
    if (changed or gone) and owner:
        try:
            ensure_dir(layout.root)
            write_record(AGENT_VERSIONS, layout.agent_versions, {"binaries": entries})
        except OSError:
            pass            # a cache: the versions were found all the same
    return out


def agent_records(cfg: Config, layout: Layout, *, owner: bool = True) -> list[dict[str, Any]]:
    """The `agents --json` records, by agent name (CONTRACT.md): `name, adaptor, command`
    (the resolved binary, null when not found), `version`, `found`, `user`,
    `max_concurrent`. `owner`: whether this reader may rewrite the version cache."""
    env = dict(os.environ)
    located = {name: locate(agent, env) for name, agent in cfg.agents.items()}
    found = {loc.path: {**env, **dict(cfg.agents[name].env)}
             for name, loc in located.items() if loc.path is not None}
    known = versions(layout, found, owner=owner)
    records = []
    for name in sorted(cfg.agents):
        agent, loc = cfg.agents[name], located[name]
        records.append({
            "name": name,
            "adaptor": agent.adaptor,
            "command": loc.path,
            "version": None if loc.path is None else known.get(loc.path),
            "found": loc.path is not None,
            "user": agent.user,
            "max_concurrent": agent.max_concurrent,
        })
    return records
