"""batchctl, batchd's operator tool: the command table and argument parsing (CONTRACT.md).

`batchctl [-c CONFIG] COMMAND ... [--json]`. It talks to batchd only through files in the
state directory (each module of supervisor/ctl/ says what its commands read and write).
Exit codes: 0 done, 1 failed or not found (control commands and `workers` when batchd is
not running), 2 usage or configuration error, 124 `wait` timed out. An operator mistake is
a message on stderr prefixed with the program name ("batchctl: no such job: x"), never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from supervisor import __version__
from supervisor.config import WORKER_NAMES, ConfigError, load
from supervisor.ctl.agents import cmd_agents
from supervisor.ctl.callbacks import run_callbacks, setup_callbacks
from supervisor.ctl.completion import KINDS, SHELLS, cmd_complete, cmd_completion
from supervisor.ctl.control import (
    cmd_control,
    cmd_startup_log,
    cmd_status_summary,
    cmd_workers,
)
from supervisor.ctl.follow import cmd_diff, cmd_output, cmd_tail
from supervisor.ctl.history import cmd_clean, cmd_history
from supervisor.ctl.jobs import (
    cmd_batch,
    cmd_batches,
    cmd_cancel,
    cmd_jobs,
    cmd_pause,
    cmd_retry,
    cmd_stats,
    cmd_status_job,
    cmd_wait,
)
from supervisor.ctl.locks import run_locks, setup_locks
from supervisor.ctl.out import EXIT_FAILED, EXIT_USAGE, PROG, CtlError, Ctx
from supervisor.ctl.repos import run_repo, setup_repo
from supervisor.ctl.submit import cmd_submit
from supervisor.ctl.tokens import run_token, setup_token
from supervisor.state.joblist import filter_text, parse_label, parse_since
from supervisor.state.layout import Layout
from supervisor.state.queue import QueueError
from supervisor.state.view import JOB_STATES, TERMINAL, JobFilter, Unreadable
from supervisor.state.wal import WalError

__all__ = ["build_parser", "main"]

Run = Callable[[Ctx, Any], int]
Setup = Callable[[argparse.ArgumentParser], None]


def _none(p: argparse.ArgumentParser) -> None:
    """A command without arguments."""


def _job(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB", help="job id")


def _worker(p: argparse.ArgumentParser) -> None:
    p.add_argument("worker", metavar="WORKER", choices=WORKER_NAMES,
                   help="one of: " + ", ".join(WORKER_NAMES))


def _submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", metavar="A", help="agent name (from the configuration)")
    p.add_argument("--repo", metavar="R", action="append", default=[],
                   help="repository name (repeatable)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt")
    prompt.add_argument("--prompt-file", metavar="F", help="read the prompt from F (- = stdin)")
    p.add_argument("--callback", metavar="URL", help="http(s) URL POSTed when the job ends")
    p.add_argument("--timeout", metavar="D", help="job timeout: seconds or 30s, 2m, 1h")
    p.add_argument("--batch", metavar="B", help="batch name")
    p.add_argument("--id", metavar="ID", help="job id (default: a fresh one)")
    p.add_argument("--exclusive", action="store_true", help="hold repository locks all run")
    p.add_argument("--resume", metavar="JOB",
                   help="continue JOB's agent session, in JOB's workspace (same agent)")
    p.add_argument("--idle-timeout", dest="idle_timeout", metavar="D",
                   help="stop the job (timed_out, reason idle) after D without output")
    p.add_argument("--after", metavar="IDS", action="append", default=[],
                   help="start only when every one of these jobs has completed")
    p.add_argument("--after-any", metavar="IDS", action="append", default=[],
                   help="start when these jobs are terminal, whatever their state")
    p.add_argument("--priority", metavar="N", type=int,
                   help="higher starts first (-1000..1000, default 0)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--not-before", metavar="TIME", help="stay queued until TIME (ISO-8601)")
    when.add_argument("--delay", metavar="D", help="stay queued for D (30s, 10m, 2h)")
    p.add_argument("--label", metavar="K=V", action="append", default=[],
                   help="a label (repeatable); `jobs --label K=V` filters by it")
    p.add_argument("--retries", metavar="N", type=int,
                   help="resubmit a lost or failed job up to N times (0..10)")
    p.add_argument("--push", metavar="BRANCH", nargs="?", const=True,
                   help="when the job completes, commit its changes and push them to BRANCH "
                        "(default batchd/<job id>) of each repository's remote")
    p.add_argument("--from", dest="from_file", metavar="FILE.jsonl",
                   help="submit every job of a JSONL file (all or nothing; - = stdin)")


def _status(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB", nargs="?", help="job id (default: a summary)")


def _jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="S", choices=JOB_STATES,
                   help="only jobs in state S: " + ", ".join(JOB_STATES))
    p.add_argument("--batch", metavar="B", help="only jobs of batch B")
    p.add_argument("--agent", metavar="A", help="only jobs of agent A")
    p.add_argument("--label", metavar="K=V", action="append", default=[],
                   help="only jobs with this label (repeatable: all of them)")
    p.add_argument("--since", metavar="TIME",
                   help="only jobs submitted since TIME (ISO-8601, or a duration ago: 1h)")
    p.add_argument("--limit", metavar="N", type=int, help="only the N most recent")


def _jobs_filter(a: Any) -> JobFilter:
    """The `jobs` filters from the command line (exit 2 on a bad one)."""
    try:
        labels = dict(parse_label(value) for value in a.label)
        since = None if a.since is None else parse_since(a.since)
        for flag, value in (("--batch", a.batch), ("--agent", a.agent)):
            if value is not None:
                filter_text(flag, value)
    except ValueError as exc:
        raise CtlError(f"jobs: {exc}", EXIT_USAGE) from None
    if a.limit is not None and a.limit < 1:
        raise CtlError(f"--limit: expected a positive number, got {a.limit}", EXIT_USAGE)
    return JobFilter(agent=a.agent, labels=labels, since=since, limit=a.limit)


def _shell(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")


def _kind(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", choices=KINDS)


def _tail(p: argparse.ArgumentParser) -> None:
    _job(p)
    p.add_argument("-n", dest="lines", metavar="N", type=int, default=10,
                   help="how many lines (default 10)")
    p.add_argument("-f", dest="follow", action="store_true",
                   help="then follow until the job ends")


def _wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", metavar="JOB", nargs="+", help="job ids")
    p.add_argument("--timeout", metavar="D", help="give up after D (exit 124)")


def _batch(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch", metavar="B", help="batch name")


def _clean(p: argparse.ArgumentParser) -> None:
    p.add_argument("--older-than", metavar="D",
                   help="only jobs that finished at least D ago (default: any finished job)")
    p.add_argument("--state", metavar="S", action="append", default=[],
                   choices=sorted(TERMINAL),
                   help="only jobs in this finished state (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be forgotten, change nothing")


def _history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--month", metavar="YYYY-MM", help="only jobs that finished that month")


def _control(op: str) -> Run:
    return lambda ctx, a: cmd_control(ctx, op, getattr(a, "worker", None))


#: name -> (help, argument setup, run). The order is the order of `batchctl --help`.
COMMANDS: dict[str, tuple[str, Setup, Run]] = {
    "submit": ("record a job (or --from FILE.jsonl: many) durably; print ids",
               _submit, cmd_submit),
    "status": ("one job's record; without JOB a summary of batchd",
               _status, lambda c, a: cmd_status_job(c, a.job) if a.job is not None
               else cmd_status_summary(c)),
    "jobs": ("list jobs in submission order", _jobs,
             lambda c, a: cmd_jobs(c, a.state, a.batch, _jobs_filter(a))),
    "output": ("a job's whole output so far", _job, lambda c, a: cmd_output(c, a.job)),
    "tail": ("the last lines of a job's output; -f follows", _tail,
             lambda c, a: cmd_tail(c, a.job, a.lines, a.follow)),
    "diff": ("a job's changes as one patch (empty when none)", _job,
             lambda c, a: cmd_diff(c, a.job)),
    "wait": ("wait until jobs are terminal (0 all completed, 1 other, 124 timeout)", _wait,
             lambda c, a: cmd_wait(c, a.jobs, a.timeout)),
    "cancel": ("cancel a job", _job, lambda c, a: cmd_cancel(c, a.job)),
    "retry": ("a new job with a finished job's spec (retry_of); print its id", _job,
              lambda c, a: cmd_retry(c, a.job)),
    "pause": ("start no new job until `resume` (running jobs go on; survives restarts)",
              _none, lambda c, a: cmd_pause(c, True)),
    "resume": ("start jobs again after `pause`", _none, lambda c, a: cmd_pause(c, False)),
    "batches": ("every batch and its state counts", _none, lambda c, a: cmd_batches(c)),
    "batch": ("one batch: counts, done, job ids", _batch, lambda c, a: cmd_batch(c, a.batch)),
    "stats": ("job counters, worker restarts, what the reaper removed", _none,
              lambda c, a: cmd_stats(c)),
    "clean": ("forget finished jobs now, as retention does (archived first)", _clean,
              lambda c, a: cmd_clean(c, a.older_than, a.state, a.dry_run)),
    "history": ("archived job records (forgotten by retention or clean), newest first",
                _history, lambda c, a: cmd_history(c, a.month)),
    "callbacks": ("webhook deliveries; `callbacks retry ID` asks for one more try",
                  setup_callbacks, run_callbacks),
    "locks": ("repository locks: holders, and waiting jobs in FIFO order", setup_locks,
              run_locks),
    "repo": ("registered repositories: `repo add NAME URL [--branch B] [--exclusive]`, "
             "`repo list`, `repo remove NAME`", setup_repo, run_repo),
    "workers": ("each worker's state (batchd must run)", _none, lambda c, a: cmd_workers(c)),
    "start": ("start a worker", _worker, _control("start")),
    "stop": ("stop a worker", _worker, _control("stop")),
    "restart": ("restart a worker", _worker, _control("restart")),
    "shutdown": ("stop batchd (as SIGTERM); jobs keep running", _none, _control("shutdown")),
    "reload": ("reload the configuration (as SIGHUP)", _none, _control("reload")),
    "startup-log": ("the last startups, phase by phase", _none,
                    lambda c, a: cmd_startup_log(c)),
    "agents": ("each agent: adaptor, binary, version, found, user", _none,
               lambda c, a: cmd_agents(c)),
    "token": ("API tokens: `token add NAME --scope read|submit|admin` (printed once), "
              "`token list`, `token revoke NAME`", setup_token, run_token),
    "completion": ("a shell completion script: completion bash|zsh|fish", _shell,
                   lambda c, a: cmd_completion(c, a.shell, build_parser())),
}

#: Commands for scripts, not people: not listed in --help.
HIDDEN: dict[str, tuple[str, Setup, Run]] = {
    "__complete": ("values for shell completion", _kind, lambda c, a: cmd_complete(c, a.kind)),
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="batchctl", description="Operate batchd: submit and inspect jobs, control workers.")
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="configuration file (default: $BATCHD_CONFIG, "
                             "/etc/batchd/batchd.yaml, built-in)")
    parser.add_argument("--version", action="version", version=f"batchctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (text, setup, run) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        setup(p)
        p.add_argument("--json", action="store_true", help="print one JSON document")
        p.set_defaults(run=run)
    for name, (text, setup, run) in HIDDEN.items():
        p = sub.add_parser(name, description=text)
        setup(p)
        p.set_defaults(run=run, json=False)
    return parser


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one batchctl command; return its exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:          # argparse: usage errors (2), --help (0)
        return _exit_code(exc)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ctx = Ctx(cfg=cfg, layout=Layout(cfg.state_dir), json=args.json)
    try:
        code: int = args.run(ctx, args)
        sys.stdout.flush()
    except CtlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except Unreadable as exc:            # state that exists but cannot be read
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`batchctl jobs | head`): silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    except (QueueError, WalError) as exc:   # a read after the queue opened fine
        print(f"{PROG}: cannot read the job queue at {ctx.layout.wal_dir}: {exc}",
              file=sys.stderr)
        return EXIT_FAILED
    return code

