"""batchd, the parent: forks the four workers, supervises them, recovers in order, obeys batchctl.

`batchd [-c CONFIG] [--check]` runs in the foreground (systemd's Type=notify; no
daemonizing). The loop and its parts are in batchd.supervise; docs/SUPERVISOR.md tells
the whole story (the process table, batchd's life table, startup recovery, control
requests, the files batchd writes and what a crash leaves of each).

`--check` also warns on stderr (exit 0 all the same) about each agent the configuration
names whose binary is missing, and each whose jobs would be refused (aider without a model).

Exit codes: 0 stopped by SIGTERM/SIGINT/`batchctl shutdown`, or `--check` found the config
valid; 1 startup recovery of the critical worker (scheduler) failed, the scheduler went
FATAL later (restart intensity exceeded or start retries used up), or another batchd holds
the state directory; 2 bad command line or bad configuration (nothing written on disk).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping

from supervisor import log as _log
from supervisor.batchd import loop
from supervisor.batchd.procstate import Proc
from supervisor.batchd.publish import workers_record
from supervisor.batchd.reload import changed_workers
from supervisor.batchd.sdnotify import Notifier
from supervisor.batchd.startup import PHASES, append_startup
from supervisor.batchd.supervise import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Batchd,
    record_early_signal,
)
from supervisor.batchd.timers import Timers
from supervisor.batchd.workers import CRITICAL, describe_exit
from supervisor.config import (
    WORKER_NAMES,
    Config,
    ConfigError,
    WorkerConfig,
    enabled_workers,
    load,
    resolve_path,
)
from supervisor.state.agentbin import agent_path, locate, refusal

__all__ = [
    "CRITICAL",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "PHASES",
    "Batchd",
    "Proc",
    "Timers",
    "append_startup",
    "changed_workers",
    "check_report",
    "check_warnings",
    "describe_exit",
    "main",
    "serve",
    "workers_record",
]


def check_report(cfg: Config) -> str:
    """What `--check` prints for a valid configuration."""
    lines = [f"configuration OK: {cfg.source}",
             f"  state_dir: {cfg.state_dir}",
             f"  workspace_dir: {cfg.workspace_dir}",
             f"  log: level {cfg.log.level}, format {cfg.log.format}, "
             f"to {cfg.log.file or 'stderr'}"]
    for name in WORKER_NAMES:
        w = cfg.workers.get(name, WorkerConfig())
        if name not in enabled_workers(cfg):
            lines.append(f"  worker {name}: off (api.listen is null)")
            continue
        lines.append(f"  worker {name}: startsecs {w.startsecs:g}s, startretries "
                     f"{w.startretries}, stopwaitsecs {w.stopwaitsecs:g}s, at most "
                     f"{w.max_restarts} restarts in {w.restart_window:g}s"
                     + (" (critical)" if name in CRITICAL else ""))
    lines.append(f"  agents: {', '.join(sorted(cfg.agents)) or '(none)'}")
    lines.append(f"  repositories: {', '.join(sorted(cfg.repositories)) or '(none)'}")
    if cfg.api.listen is not None:
        lines.append(f"  api: listen {cfg.api.listen}, tokens in "
                     f"{cfg.api.tokens_file or cfg.state_dir / 'api' / 'tokens'}")
    if cfg.metrics.textfile is not None:
        lines.append(f"  metrics: textfile {cfg.metrics.textfile}")
    lines.append(f"  scheduler: max_concurrent_jobs {cfg.scheduler.max_concurrent_jobs}, "
                 f"launcher {cfg.launcher}")
    return "\n".join(lines)


def check_warnings(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """What `--check` warns about (a valid configuration all the same, exit 0): each agent
    the configuration file names whose binary is not found (looked up as its jobs' adaptor
    will, on batchd's PATH or the agent's own), and each whose jobs would be refused."""
    out = []
    for name in sorted(cfg.agents):
        agent = cfg.agents[name]
        if not agent.configured:
            continue
        found = locate(agent, env)
        relative = "/" in found.command and not os.path.isabs(found.command)
        if found.path is None and not relative:
            where = ("" if "/" in found.command
                     else f" on PATH ({agent_path(agent, env) or 'not set'})")
            out.append(f"agent {name!r}: its binary {found.command!r} was not found{where}; "
                       "its jobs will fail (agent_not_found)")
        why = refusal(agent)
        if why is not None:
            out.append(f"agent {name!r} {why}; its jobs are refused")
    return out


# ----------------------------------------------------------------------------- the command

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batchd",
        description="batchd: a crash-resilient batch-job supervisor (runs in the foreground).")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="the YAML configuration (default: $BATCHD_CONFIG, then "
                        "/etc/batchd/batchd.yaml, then the built-in default)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration, print what was checked, and exit "
                        "(0 valid, 2 invalid)")
    return p


def _catch_early_signals() -> None:
    """From the first instruction on, SIGTERM/SIGINT/SIGHUP are recorded, not fatal.

    Python's defaults would kill batchd (exit 143) for a SIGTERM that arrives while it
    loads its config and takes its lock; the loop handles recorded ones once it runs.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, record_early_signal)


def main(argv: list[str] | None = None) -> int:
    """`batchd [-c CONFIG] [--check]`; returns the exit code (see the module docstring)."""
    _catch_early_signals()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:          # argparse printed the usage error (or --help)
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        cfg = load(args.config, files=True)
    except ConfigError as exc:
        print(f"batchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(check_report(cfg))
        for warning in check_warnings(cfg, os.environ):
            print(f"batchd: warning: {warning}", file=sys.stderr)
        return EXIT_OK
    return serve(cfg, config_path=resolve_path(args.config))


def serve(cfg: Config, *, config_path: str | None) -> int:
    """Run batchd on `cfg` in the foreground until stopped (SIGHUP re-reads `config_path`,
    or the lookup of supervisor.config.load when None); the exit code."""
    _catch_early_signals()
    try:
        log = _log.setup(cfg.log, name="batchd")
    except ConfigError as exc:
        print(f"batchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    notifier = Notifier.from_env(os.environ)
    return loop.run(Batchd(cfg, config_path=config_path, log=log, notifier=notifier))

