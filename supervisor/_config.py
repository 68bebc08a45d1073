"""batchd's configuration: the YAML schema of CONTRACT.md, its defaults and its validation.

The parser (which reports each bad key with its file and line) is being written; the
dataclasses below are the interface the rest of batchd codes against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AgentConfig",
    "CallbacksConfig",
    "Config",
    "ConfigError",
    "LogConfig",
    "ReaperConfig",
    "RepoConfig",
    "SchedulerConfig",
    "WorkerConfig",
    "default_state_dir",
]

ADAPTORS = ("claude", "gemini", "codex", "aider", "opencode", "q", "command")


class ConfigError(Exception):
    """A configuration problem; str() names the file, line and key."""


def default_state_dir(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """$BATCHD_STATE_DIR, else /var/lib/batchd as root, else ~/.local/state/batchd."""
    e = os.environ if env is None else env
    if e.get("BATCHD_STATE_DIR"):
        return Path(e["BATCHD_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/batchd")
    return Path(e.get("HOME", os.path.expanduser("~"))) / ".local" / "state" / "batchd"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"          # debug | info | warning | error
    format: str = "console"      # console | json
    file: Path | None = None     # None: stderr


@dataclass(frozen=True)
class SchedulerConfig:
    max_concurrent_jobs: int = 4
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    dead_after: float = 120.0
    job_timeout: float = 86400.0
    kill_grace: float = 10.0


@dataclass(frozen=True)
class WorkerConfig:
    startsecs: float = 1.0
    startretries: int = 3
    stopwaitsecs: float = 10.0
    # OTP-style restart intensity: more than max_restarts crashes within
    # restart_window seconds escalates (FATAL; batchd exits if the worker is critical).
    max_restarts: int = 30
    restart_window: float = 60.0


@dataclass(frozen=True)
class AgentConfig:
    adaptor: str
    command: str | None = None           # the CLI binary; None: the adaptor's default name
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None         # None: scheduler.job_timeout
    user: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class RepoConfig:
    url: str
    branch: str | None = None            # None: the remote's default branch
    exclusive: bool = False


@dataclass(frozen=True)
class CallbacksConfig:
    retry_schedule: tuple[float, ...] = (30.0, 120.0, 600.0)
    timeout: float = 30.0
    secret: str | None = None


@dataclass(frozen=True)
class ReaperConfig:
    interval: float = 60.0
    grace: float = 600.0


def _default_workers() -> dict[str, WorkerConfig]:
    return {name: WorkerConfig() for name in ("scheduler", "locks", "reaper", "callbacks")}


def _default_agents() -> dict[str, AgentConfig]:
    agents = {"shell": AgentConfig(adaptor="command")}
    for name in ("claude", "gemini", "codex", "aider", "opencode", "q"):
        agents[name] = AgentConfig(adaptor=name)
    return agents


@dataclass(frozen=True)
class Config:
    state_dir: Path
    workspace_dir: Path
    log: LogConfig = field(default_factory=LogConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    workers: dict[str, WorkerConfig] = field(default_factory=_default_workers)
    agents: dict[str, AgentConfig] = field(default_factory=_default_agents)
    repositories: dict[str, RepoConfig] = field(default_factory=dict)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    reaper: ReaperConfig = field(default_factory=ReaperConfig)
    launcher: str = "auto"               # auto | direct | systemd
    source: str = "<built-in>"           # the file this came from
