"""What a reload changes: the new configuration, checked against the running one."""

from __future__ import annotations

from supervisor.config import Config, ConfigError, enabled_workers, load, worker_settings

__all__ = ["changed_workers", "read_new_config"]


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
        new = load(config_path)
    except (ConfigError, OSError, ValueError, RecursionError) as exc:
        return str(exc)
    if new.state_dir != running.state_dir:
        return (f"state_dir cannot change on reload ({running.state_dir} -> "
                f"{new.state_dir}); restart batchd to move it")
    return new
