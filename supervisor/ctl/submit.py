"""`batchctl submit`: the command's flags and files, handed to the job door (state.submission).

All jobs of one invocation are checked by the one validator, then written as ONE durable
request (state.submission.accept): exit 0 means they survive a crash from then on; a bad
job (a `--from` line, named by its number) queues none of them (exit 2); a job queue that
cannot be read is exit 1, since duplicate ids could not be checked.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from supervisor.ctl.jobs import duration_arg
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.submission import (
    PROMPT_MAX_BYTES,
    Checker,
    DiskLow,
    JobError,
    accept,
    known,
    parse_jsonl,
)

__all__ = ["cmd_submit"]


def _read_input(path: str, what: str, limit: int) -> bytes:
    """The bytes of `path` ('-' = stdin), at most `limit` of them: CtlError(exit 2) if it
    cannot be read or holds more (read no further: `/dev/zero` is refused, not swallowed)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise CtlError(f"cannot read {what} {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    if len(data) > limit:
        raise CtlError(f"{what} {path} is over the limit of {limit} bytes "
                       f"({limit >> 20} MiB)", EXIT_USAGE)
    return data


#: The largest `--from` file read (a WAL record's limit; the API takes at most 16 MiB).
JOBS_FILE_MAX_BYTES = 256 * 1024 * 1024


_SINGLE_FLAGS = ("agent", "repo", "prompt", "prompt_file", "callback", "timeout", "batch",
                 "id", "exclusive", "resume", "idle_timeout", "after", "after_any", "priority",
                 "not_before", "delay", "label", "retries", "push")


def _job_ids(flag: str, values: list[str]) -> list[str]:
    """`--after a,b --after c` -> [a, b, c] (blank pieces refused)."""
    ids = [piece.strip() for value in values for piece in value.split(",")]
    if any(not i for i in ids):
        raise CtlError(f"{flag}: expected JOB[,JOB...], got {','.join(values)!r}", EXIT_USAGE)
    return ids


def _labels(values: list[str]) -> dict[str, str]:
    """`--label K=V` (repeatable; a key given twice is refused)."""
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise CtlError(f"--label: expected K=V, got {value!r}", EXIT_USAGE)
        if key in labels:
            raise CtlError(f"--label: {key!r} given twice", EXIT_USAGE)
        labels[key] = val
    return labels


def _control_flags(args: Any, job: dict[str, Any], now: float) -> None:
    """The job-control flags of a single `submit` into `job` (checked again by the door)."""
    if args.after:
        job["after"] = _job_ids("--after", args.after)
    if args.after_any:
        job["after_any"] = _job_ids("--after-any", args.after_any)
    if args.priority is not None:
        job["priority"] = args.priority
    if args.not_before is not None:
        if parse_iso(args.not_before) is None:
            raise CtlError(f"--not-before: {args.not_before!r} is not an ISO-8601 time "
                           "(e.g. 2027-01-15T08:00:00Z; for a time from now use --delay)",
                           EXIT_USAGE)
        job["not_before"] = args.not_before
    if args.delay is not None:
        job["not_before"] = iso_now(now + duration_arg(args.delay, "--delay"))
    if args.label:
        job["labels"] = _labels(args.label)
    if args.retries is not None:
        job["retries"] = args.retries
    if args.push is not None:
        job["push"] = args.push


def _single_job(args: Any) -> dict[str, Any]:
    """The job dict described by the flags of a single `submit` (`--resume JOB` takes
    JOB's agent, so it needs no --agent)."""
    if args.agent is None and args.resume is None:
        raise CtlError("submit needs --agent (or --resume JOB, or --from FILE.jsonl)",
                       EXIT_USAGE)
    prompt = args.prompt
    if args.prompt_file is not None:
        raw = _read_input(args.prompt_file, "prompt file", PROMPT_MAX_BYTES)
        try:
            prompt = raw.decode()
        except UnicodeDecodeError as exc:
            raise CtlError(f"prompt file {args.prompt_file} is not UTF-8: {exc}",
                           EXIT_USAGE) from None
    if prompt is None:
        raise CtlError("submit needs --prompt TEXT or --prompt-file FILE", EXIT_USAGE)
    job: dict[str, Any] = {"prompt": prompt, "repos": list(args.repo),
                           "exclusive": bool(args.exclusive)}
    for key in ("agent", "callback", "timeout", "batch", "id", "resume", "idle_timeout"):
        value = getattr(args, key)
        if value is not None:
            job[key] = value
    _control_flags(args, job, time.time())
    return job


def cmd_submit(ctx: Ctx, args: Any) -> int:
    """`submit ...` or `submit --from FILE.jsonl`: validate all, write one request, print ids.

    Everything but "is the id in use" is checked first, before anything touches the disk.
    Then, under submit_lock, the ids in use are read and checked and the request written.
    """
    single: dict[str, Any] | None = None
    data = b""
    if args.from_file is not None:
        given = [f for f in _SINGLE_FLAGS if getattr(args, f) not in (None, False, [])]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise CtlError(f"submit --from cannot be combined with {flags}", EXIT_USAGE)
        data = _read_input(args.from_file, "jobs file", JOBS_FILE_MAX_BYTES)
    else:
        single = _single_job(args)
    name = "<stdin>" if args.from_file == "-" else str(args.from_file)
    jobs = _check_all(ctx, single, name, data)
    if not jobs:
        ctx.note(f"{name}: no jobs; nothing submitted")
        if ctx.json:
            ctx.emit([])
        return EXIT_OK
    try:
        ids = accept(ctx.cfg, ctx.layout, jobs,
                     source=None if single is not None else (name, data))
    except JobError as exc:
        raise CtlError(str(exc), EXIT_USAGE) from None
    except DiskLow as exc:
        raise CtlError(str(exc), EXIT_FAILED) from None
    if not ctx.json:
        ctx.out.write("".join(i + "\n" for i in ids))
    elif single is not None:
        ctx.emit({"id": ids[0]})
    else:
        ctx.emit(ids)
    return EXIT_OK


def _check_all(ctx: Ctx, single: dict[str, Any] | None, name: str,
               data: bytes) -> list[dict[str, Any]]:
    """The checked jobs (`single`, or those of `data`, the file `name`), ids not yet given.

    Ids in use are not checked here (see state.submission.accept): that needs its lock.
    """
    checker = Checker(known(ctx.cfg, ctx.layout))
    try:
        if single is None:
            return parse_jsonl(data, name, checker)
        return [checker.check(single)]
    except JobError as exc:
        raise CtlError(str(exc), EXIT_USAGE) from None
