"""`batchctl submit`: validate jobs at the door, then hand them to the scheduler in one file.

Everything is checked before anything is written: agent known, repositories known (config
plus the `repo add` registry), callback an http(s) URL with a host, a valid port and no
whitespace or control character, non-empty prompt, timeout a positive duration, id well
formed and not in use (in the file, the queue, or a submission still pending in the
inbox), no unknown or duplicate keys, right types. A bad `--from` line names the file and
line ("jobs.jsonl:7: unknown agent 'cluade'") and queues nothing (exit 2). A job queue
that cannot be read is exit 1: duplicates could not be checked.

Duplicate ids across concurrent submitters: the check ("read the ids in use: inbox first,
then queue") and the write of the request happen under an exclusive flock on
`scheduler/submit.lock`, so two submitters cannot both see an id free and both write it.
The scheduler enqueues a request's jobs before it removes the request, so under the lock
every id in use is in the inbox or in the queue when it is read. The lock file is created
empty (O_CREAT) and never written, replaced or removed; the kernel drops the flock when
the submitter exits, however it exits, so a crash cannot leave it held; a lock file lost
to a power cut is simply created again.

Durability: all jobs of one invocation go into ONE request file
`scheduler/inbox/<request id>.json`, written by write_record (temp file, fsync, rename,
fsync folder). Exit 0 therefore means the jobs survive a crash from then on; a crash
before the rename leaves only a `.tmp.` file (never read as a request) and nothing queued,
so a submit is all or nothing. The scheduler enqueues the jobs (idempotent by job id) and
only then removes the file. Speed: the known ids are loaded once into a set, lines are
checked with cached URL and duration checks, and there is a single fsync per submit.
"""

from __future__ import annotations

import codecs
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervisor.config import Config, parse_duration
from supervisor.ctl.out import EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.ctl.view import open_view, read_registered_repos
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import iso_now
from supervisor.state.flock import exclusive
from supervisor.state.jobs import SUBMIT_KEYS, new_job_id, submit_request, valid_job_id
from supervisor.state.layout import Layout, send_request

__all__ = [
    "Checker",
    "JobError",
    "Known",
    "assign_ids",
    "cmd_submit",
    "known_repos",
    "parse_jsonl",
    "submit_lock",
    "write_submission",
]


@dataclass(frozen=True)
class Known:
    """What a submission is checked against: agents, repositories, ids already in use."""

    agents: frozenset[str]
    repos: frozenset[str]
    ids: frozenset[str]


class JobError(Exception):
    """One problem with one submitted job (the caller adds the file and line)."""


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number",
               float: "number", bool: "boolean", type(None): "null"}


def _tname(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _expect(key: str, value: object, kinds: tuple[type, ...], what: str) -> None:
    if type(value) not in kinds:
        raise JobError(f"{key} must be {what}, found {_tname(value)}")


#: Whitespace (Unicode too) and C0/C1 control characters: never part of a callback URL.
_URL_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be a callback, or None.

    A callback is http:// or https:// with a non-empty host, a port in 1..65535 if one
    is given, and no whitespace or control character anywhere.
    """
    if _URL_BAD_CHAR.search(url):
        return f"callback URL {url!r} contains whitespace or a control character"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"callback URL {url!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"callback URL {url!r} must be http:// or https:// with a host"
    try:
        port = parts.port
    except ValueError as exc:
        return f"callback URL {url!r} has an invalid port: {exc}"
    if port == 0:
        return f"callback URL {url!r} has an invalid port: 0"
    return None


class Checker:
    """Validates job dicts (a JSONL line or the flags of `submit`) against `Known`.

    URL and duration verdicts are cached: a 100,000-line file usually repeats them.
    """

    def __init__(self, known: Known) -> None:
        self.known = known
        self._urls: dict[str, str | None] = {}
        self._durations: dict[str | int | float, float | str] = {}

    def _url(self, url: str) -> None:
        if url not in self._urls:
            self._urls[url] = _url_problem(url)
        problem = self._urls[url]
        if problem is not None:
            raise JobError(problem)

    def _duration(self, value: str | int | float) -> float:
        if value not in self._durations:
            try:
                secs = parse_duration(value)
                self._durations[value] = (secs if secs > 0
                                          else f"timeout {value!r} must be positive")
            except ValueError as exc:
                self._durations[value] = f"timeout: {exc}"
        verdict = self._durations[value]
        if isinstance(verdict, str):
            raise JobError(verdict)
        return verdict

    def check(self, obj: object) -> dict[str, Any]:
        """The normalized job (id None when not given), or JobError naming the first problem."""
        if type(obj) is not dict:
            raise JobError(f"expected a JSON object, found {_tname(obj)}")
        extra = obj.keys() - SUBMIT_KEYS
        if extra:
            names = ", ".join(repr(k) for k in sorted(extra))
            raise JobError(f"unknown key{'s' if len(extra) > 1 else ''} {names}")
        agent = obj.get("agent")
        if agent is None:
            raise JobError("missing key 'agent'")
        _expect("agent", agent, (str,), "a string")
        if agent not in self.known.agents:
            raise JobError(f"unknown agent {agent!r}")
        prompt = obj.get("prompt")
        if prompt is None:
            raise JobError("missing key 'prompt'")
        _expect("prompt", prompt, (str,), "a string")
        if not prompt.strip():
            raise JobError("empty prompt")
        repos = obj.get("repos")
        if repos is None:
            repos = []
        _expect("repos", repos, (list,), "a list of repository names")
        for repo in repos:
            _expect("repos", repo, (str,), "a list of repository names")
            if repo not in self.known.repos:
                raise JobError(f"unknown repository {repo!r}")
        if len(set(repos)) != len(repos):
            raise JobError("repos lists a repository twice")
        callback = obj.get("callback")
        if callback is not None:
            _expect("callback", callback, (str,), "a URL string")
            self._url(callback)
        timeout = obj.get("timeout")
        if timeout is not None:
            _expect("timeout", timeout, (str, int, float), "a duration (seconds or '30s')")
            timeout = self._duration(timeout)
        batch = obj.get("batch")
        if batch is not None:
            _expect("batch", batch, (str,), "a string")
            if not batch.strip():
                raise JobError("batch must not be empty")
        job_id = obj.get("id")
        if job_id is not None:
            _expect("id", job_id, (str,), "a string")
            if not valid_job_id(job_id):
                raise JobError(f"invalid job id {job_id!r} "
                               "(expected [A-Za-z0-9][A-Za-z0-9._-]{0,63})")
            if job_id in self.known.ids:
                raise JobError(f"job id {job_id!r} is already in use")
        exclusive = obj.get("exclusive", False)
        _expect("exclusive", exclusive, (bool,), "true or false")
        return {"id": job_id, "agent": agent, "prompt": prompt, "repos": repos,
                "callback": callback, "timeout": timeout, "batch": batch,
                "exclusive": exclusive}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: the object as a dict, or JobError naming a key given twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JobError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


_decode_line = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys).decode


def parse_jsonl(data: bytes, name: str, checker: Checker) -> list[dict[str, Any]]:
    """Every job of a JSONL file, in order; CtlError(exit 2) naming `name:line` otherwise.

    A key given twice in one object is refused (JSON would silently keep the last one).
    Lines are strict UTF-8; a UTF-8 byte order mark at the start of the file is skipped.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    jobs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    check = checker.check
    decode = _decode_line
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            try:
                obj = decode(line.decode())
            except UnicodeDecodeError as exc:
                raise JobError(f"not UTF-8: {exc}") from None
            except json.JSONDecodeError as exc:
                raise JobError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
            job = check(obj)
            job_id = job["id"]
            if job_id is not None:
                first = seen.setdefault(job_id, lineno)
                if first != lineno:
                    raise JobError(f"duplicate job id {job_id!r} (also on line {first})")
        except JobError as exc:
            raise CtlError(f"{name}:{lineno}: {exc}", EXIT_USAGE) from None
        jobs.append(job)
    return jobs


def assign_ids(jobs: list[dict[str, Any]], in_use: frozenset[str], *,
               now: float | None = None,
               token: Callable[[], str] = lambda: secrets.token_hex(4)) -> None:
    """Give every job without an id a fresh one not in use and not given in `jobs`."""
    taken = {j["id"] for j in jobs if j["id"] is not None}
    prefix = new_job_id(now).rsplit("-", 1)[0]
    for job in jobs:
        if job["id"] is not None:
            continue
        job_id = f"{prefix}-{token()}"
        while job_id in taken or job_id in in_use:
            job_id = f"{prefix}-{token()}"
        taken.add(job_id)
        job["id"] = job_id


@contextmanager
def submit_lock(layout: Layout) -> Iterator[None]:
    """Hold the exclusive flock on `scheduler/submit.lock` (created empty if missing).

    Blocks while another submitter holds it; released when the block ends (or the
    process dies).
    """
    ensure_dir(layout.submit_lock.parent)
    with exclusive(layout.submit_lock):
        yield


def write_submission(layout: Layout, jobs: list[dict[str, Any]], *,
                     now: float | None = None) -> Path:
    """The ONE durable request file carrying `jobs` (each gets created_at); its path."""
    t = time.time() if now is None else now
    created = iso_now(t)
    for job in jobs:
        job["created_at"] = created
    return send_request(layout, "scheduler", submit_request(jobs, now=t))


def known_repos(cfg: Config, layout: Layout) -> frozenset[str]:
    """Repository names a job may use: the config's plus those registered with `repo add`."""
    return frozenset(cfg.repositories) | read_registered_repos(layout)


def _read_input(path: str, what: str) -> bytes:
    """The bytes of `path` ('-' = stdin); CtlError(exit 2) if it cannot be read."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {what} {path}: {exc.strerror or exc}", EXIT_USAGE) from None


_SINGLE_FLAGS = ("agent", "repo", "prompt", "prompt_file", "callback", "timeout", "batch",
                 "id", "exclusive")


def _single_job(args: Any) -> dict[str, Any]:
    """The job dict described by the flags of a single `submit`."""
    if args.agent is None:
        raise CtlError("submit needs --agent (or --from FILE.jsonl)", EXIT_USAGE)
    prompt = args.prompt
    if args.prompt_file is not None:
        raw = _read_input(args.prompt_file, "prompt file")
        try:
            prompt = raw.decode()
        except UnicodeDecodeError as exc:
            raise CtlError(f"prompt file {args.prompt_file} is not UTF-8: {exc}",
                           EXIT_USAGE) from None
    if prompt is None:
        raise CtlError("submit needs --prompt TEXT or --prompt-file FILE", EXIT_USAGE)
    job: dict[str, Any] = {"agent": args.agent, "prompt": prompt, "repos": list(args.repo),
                           "exclusive": bool(args.exclusive)}
    for key in ("callback", "timeout", "batch", "id"):
        value = getattr(args, key)
        if value is not None:
            job[key] = value
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
        data = _read_input(args.from_file, "jobs file")
    else:
        single = _single_job(args)
    name = "<stdin>" if args.from_file == "-" else str(args.from_file)
    jobs = _check_all(ctx, single, name, data)
    if not jobs:
        ctx.note(f"{name}: no jobs; nothing submitted")
        if ctx.json:
            ctx.emit([])
        return EXIT_OK
    with submit_lock(ctx.layout):
        with open_view(ctx.cfg, ctx.layout) as view:
            in_use = frozenset(view.known_ids())
        _refuse_ids_in_use(jobs, in_use, None if single is not None else (name, data))
        assign_ids(jobs, in_use)
        write_submission(ctx.layout, jobs)
    ids = [j["id"] for j in jobs]
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

    Ids in use are not checked here (see _refuse_ids_in_use): that needs submit_lock.
    """
    known = Known(agents=frozenset(ctx.cfg.agents), repos=known_repos(ctx.cfg, ctx.layout),
                  ids=frozenset())
    checker = Checker(known)
    if single is None:
        return parse_jsonl(data, name, checker)
    try:
        return [checker.check(single)]
    except JobError as exc:
        raise CtlError(str(exc), EXIT_USAGE) from None


def _refuse_ids_in_use(jobs: list[dict[str, Any]], in_use: frozenset[str],
                       source: tuple[str, bytes] | None) -> None:
    """CtlError (exit 2) for the first job whose given id is in use; with `source` (the
    --from file's name and bytes) the message names its line."""
    if not in_use.intersection(j["id"] for j in jobs if j["id"] is not None):
        return
    for index, job in enumerate(jobs):
        if job["id"] in in_use:
            where = "" if source is None else f"{source[0]}:{_line_of(source[1], index)}: "
            raise CtlError(f"{where}job id {job['id']!r} is already in use", EXIT_USAGE)


def _line_of(data: bytes, index: int) -> int:
    """The line number of the job at `index` of a JSONL file (blank lines hold no job)."""
    job_lines = (n for n, line in enumerate(data.split(b"\n"), 1) if line.strip())
    return next(islice(job_lines, index, None))
