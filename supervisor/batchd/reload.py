"""What a reload changes: the new configuration, checked against the running one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.config import Config, ConfigError, enabled_workers, load, worker_settings

__all__ = ["Plan", "changed_workers", "plan", "read_new_config"]


def changed_workers(old: Config, new: Config) -> list[str]:
    """The workers (startup order) the new configuration runs whose settings differ: their
    `workers.<name>` entry or a config section they read (supervisor.config.WORKER_SECTIONS;
    `log` is read by all). An optional worker turned on or off is the caller's to see."""
    return [name for name in enabled_workers(new)
            if old.workers.get(name) != new.workers.get(name)
            or worker_settings(old, name) != worker_settings(new, name)]


def read_new_config(running: Config, config_path: str | None) -> Config | str:
    """The configuration a reload would switch to, or why it is refused (the running one
    is kept whatever the file holds: a reload never stops batchd)."""
    try:
        new = load(config_path, files=True)
    except (ConfigError, OSError, ValueError, RecursionError) as exc:
        return str(exc)
    if new.state_dir != running.state_dir:
        return (f"state_dir cannot change on reload ({running.state_dir} -> "
                f"{new.state_dir}); restart batchd to move it")
    return new


@dataclass(frozen=True)
class Plan:
    """What a reload does to the workers: restart those whose settings changed, start an
    optional worker turned on, stop one turned off."""

    changed: list[str]
    restart: list[str]
    started: list[str]
    stopped: list[str]

    def message(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in
                 (("restarted", self.restart), ("started", self.started),
                  ("stopped", self.stopped)) if names]
        return ("reloaded; " + "; ".join(parts)) if parts \
            else "reloaded; no worker needed a restart"

    def result(self) -> dict[str, Any]:
        return {"restarted": self.restart, "changed": self.changed, "started": self.started,
                "stopped": self.stopped}


def plan(old: Config, new: Config, is_stopped: Callable[[str], bool]) -> Plan:
    """The reload from `old` to `new`; `is_stopped(name)`: a stopped worker is not restarted."""
    changed = changed_workers(old, new)
    was, now = enabled_workers(old), enabled_workers(new)
    started = [n for n in now if n not in was]
    stopped = [n for n in was if n not in now]
    restart = [n for n in changed if n not in started and not is_stopped(n)]
    return Plan(changed, restart, started, stopped)
