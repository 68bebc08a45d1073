"""The job door: what a submitted job may be, and how it is handed to the scheduler, durably.

One validator (`Checker`) for every door: batchctl submit, the api, and the scheduler,
which checks every request's jobs again before it enqueues them (`check_request`).
Everything is checked before anything is written: agent known, repositories known
(config plus the `repo add` registry), callback an http(s) URL with a host, a valid port
and no whitespace or control character, non-empty prompt of at most PROMPT_MAX_BYTES (16
MiB), timeout a positive duration, id well formed and not in use (in the file, the
queue, or a submission still pending in the inbox), no unknown or duplicate keys, right
types, an agent that may run (aider without a model is refused: state.agentbin.refusal),
and text every record can hold: no lone surrogate (a JSON "\\ud800" escape, or a
command-line byte that is not UTF-8) and no NUL in any string (`_text`), durations at
most 100 years, instants in years 1..9999. A bad `--from` line names the file and line
("jobs.jsonl:7: unknown agent 'cluade'") and queues nothing.

Resuming (`submit --resume JOB`, the JSONL key `resume`): the new job continues JOB's agent
session. Resolved under the submit lock, with the same view of the jobs the id check reads
(`resolve_resumes`): JOB must exist and be finished, its agent must still be configured
(and is the new job's agent: another `agent` is refused), it must have a session id unless
its adaptor keeps sessions per folder (config.DIRECTORY_SESSIONS: aider, q), and its
workspace must still exist. The job then carries `resume_of` (JOB), `resume_session`
(JOB's session id or null), `workspace` (JOB's: the scheduler runs it there, it clones
nothing) and JOB's `repos`. A submission cannot name repositories of its own for it.

Duplicate ids across concurrent submitters: the check ("read the ids in use: inbox first,
then queue") and the write of the request happen under an exclusive flock on
`scheduler/submit.lock` (`accept`), so two submitters cannot both see an id free and both
write it. The scheduler enqueues a request's jobs before it removes the request, so under
the lock every id in use is in the inbox or in the queue when it is read. The lock file is
created empty (O_CREAT) and never written, replaced or removed; the kernel drops the flock
when the submitter exits, however it exits.

Durability: all jobs of one submission go into ONE request file
`scheduler/inbox/<request id>.json` (state.layout.send_request: temp file, fsync, rename,
fsync folder). Success therefore means the jobs survive a crash from then on; a crash
before the rename leaves only a temp file (never read as a request) and nothing queued,
so a submission is all or nothing. Speed: the known ids are loaded once into a set, lines
are checked with cached URL and duration checks, and there is a single fsync per submit.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Container, Iterable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervisor.config import DIRECTORY_SESSIONS, Config, check_branch, parse_duration
from supervisor.state import disk
from supervisor.state.agentbin import refusal
from supervisor.state.atomic import ensure_dir, file_stamp
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.flock import open_lock_file
from supervisor.state.fs import FS, REAL
from supervisor.state.git import branch_refusal
from supervisor.state.jobs import SUBMIT_KEYS, new_job_id, submit_request, valid_job_id
from supervisor.state.layout import Layout, send_request
from supervisor.state.queue import TERMINAL_STATES
from supervisor.state.queuefollow import QueueIds
from supervisor.state.repos import all_repositories, push_refusal
from supervisor.state.sublog import SubmissionLog
from supervisor.state.view import JobView, PendingIds, Unreadable, open_view, read_pending

__all__ = [
    "PROMPT_MAX_BYTES",
    "Checker",
    "DiskLow",
    "InUse",
    "JobError",
    "Known",
    "KnownCache",
    "Refused",
    "SubmitLock",
    "Taken",
    "accept",
    "accept_many",
    "assign_ids",
    "check_push",
    "check_request",
    "decode_json",
    "ids_in_use",
    "known",
    "known_repos",
    "log_submission",
    "parse_jsonl",
    "refuse_ids_in_use",
    "refuse_left_folders",
    "refuse_unknown_dependencies",
    "resolve_resumes",
    "same_job",
    "submit_lock",
    "take_many",
    "write_submission",
    "write_taken",
]

#: The largest prompt a job may have, UTF-8 encoded (the API's body limit; a prompt file
#: past it is refused before it is read whole).
PROMPT_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Known:
    """What a submission is checked against: agents, repositories, ids already in use, and
    why a job of an agent is refused (agent name -> reason, e.g. aider without a model)."""

    agents: frozenset[str]
    repos: frozenset[str]
    ids: frozenset[str]
    refused: tuple[tuple[str, str], ...] = ()
    #: Repositories `push` cannot push to, and why (state.repos.push_refusal).
    unpushable: tuple[tuple[str, str], ...] = ()


class JobError(Exception):
    """One problem with one submitted job (the caller adds the file and line)."""


class DiskLow(Exception):
    """Submissions are refused: free space is below `disk.min_free` (str() says where,
    how much, and the floor). Not the submitter's mistake: batchctl exits 1."""


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number",
               float: "number", bool: "boolean", type(None): "null"}


def _tname(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _expect(key: str, value: object, kinds: tuple[type, ...], what: str) -> None:
    if type(value) not in kinds:
        raise JobError(f"{key} must be {what}, found {_tname(value)}")


def _text(key: str, value: str) -> None:
    """JobError unless `value` is text every record, argv and log can carry: no lone
    surrogate (a JSON "\\ud800" escape, or a command-line argument that was not UTF-8,
    which Python decodes to one) and no NUL (no program argument or C string holds it)."""
    if value.isascii():
        bad = value.find("\0")
        if bad < 0:
            return
    else:
        try:
            value.encode()
            bad = value.find("\0")
            if bad < 0:
                return
        except UnicodeEncodeError as exc:
            raise JobError(f"{key} is not valid UTF-8 text: {value[exc.start]!r} at character "
                           f"{exc.start} is a lone surrogate (a \\ud800-style JSON escape, or a "
                           "command-line argument that is not UTF-8)") from None
    raise JobError(f"{key} contains a NUL character (\\u0000) at character {bad}")


#: Whitespace (Unicode too) and C0/C1 control characters: never part of a callback URL.
_URL_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be a callback, or None.

    A callback is http:// or https:// with a non-empty host, a port in 1..65535 if one
    is given, and no whitespace or control character anywhere; ASCII only (an IRI's
    non-ASCII path or host is what http.client cannot send: the callbacks worker died on
    it), and a host name whose labels are 1-63 characters (what idna can encode).
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
    if not url.isascii():
        return (f"callback URL {url!r} is not ASCII: percent-encode its path and query "
                "(RFC 3986) and write its host in punycode (xn--...)")
    if "[" not in parts.netloc:
        try:
            parts.hostname.encode("idna")
        except UnicodeError:
            return (f"callback URL {url!r} has an invalid host name {parts.hostname!r} "
                    "(each dot-separated label 1-63 characters)")
    return None


class Checker:
    """Validates job dicts (a JSONL line or the flags of `submit`) against `Known`.

    With `known` None only the job's own shape is checked, not what it names (the
    scheduler's check of a request: an agent removed from the config since the submit
    fails that job at launch, it does not refuse the others). URL and duration verdicts
    are cached: a 100,000-line file usually repeats them.
    """

    def __init__(self, known: Known | None) -> None:
        self.known = known
        self._urls: dict[str, str | None] = {}
        self._durations: dict[str | int | float, float | str] = {}

    def _url(self, url: str) -> None:
        if url not in self._urls:
            self._urls[url] = _url_problem(url)
        problem = self._urls[url]
        if problem is not None:
            raise JobError(problem)

    def _duration(self, value: str | int | float, key: str = "timeout") -> float:
        if value not in self._durations:
            try:
                secs = parse_duration(value)
                self._durations[value] = (secs if secs > 0
                                          else f"{{key}} {value!r} must be positive")
            except ValueError as exc:
                self._durations[value] = f"{{key}}: {exc}"
        verdict = self._durations[value]
        if isinstance(verdict, str):
            raise JobError(verdict.replace("{key}", key))
        return verdict

    def _agent(self, agent: str) -> None:
        if self.known is None:
            return
        if agent not in self.known.agents:
            raise JobError(f"unknown agent {agent!r}")
        for name, why in self.known.refused:
            if name == agent:
                raise JobError(f"agent {agent!r} {why}")

    def _push(self, push: object, job_id: str | None, repos: list[str], *,
              resumed: bool, stored: bool) -> bool | str | None:
        """The `push` key: true (to `batchd/<id>`), a branch name, or false/null (no push);
        JobError for a branch git refuses, a job without repositories, or a repository
        whose URL takes no push (check_push)."""
        if push is None or push is False:
            return None
        _expect("push", push, (bool, str), "true, false or a branch name")
        if isinstance(push, str):
            try:
                check_branch(push)
            except ValueError as exc:
                raise JobError(f"push: {exc}") from None
            if not stored and (why := branch_refusal(push)) is not None:
                raise JobError(f"push: {why}")
        elif job_id is not None:
            try:
                check_branch(f"batchd/{job_id}")
            except ValueError:
                raise JobError(f"push: the default branch batchd/{job_id} is not a valid git "
                               "branch name (git check-ref-format refuses it); name one "
                               "(--push BRANCH)") from None
        if not resumed:
            check_push(repos, self.known.unpushable if self.known is not None else ())
        return push if isinstance(push, str) else True

    def check(self, obj: object, *, stored: bool = False) -> dict[str, Any]:
        """The normalized job (id None when not given), or JobError naming the first problem.

        `stored`: a job as a request carries it to the scheduler (id given, created_at)."""
        if type(obj) is not dict:
            raise JobError(f"expected a JSON object, found {_tname(obj)}")
        extra = obj.keys() - (_STORED_KEYS if stored else SUBMIT_KEYS)
        if extra:
            names = ", ".join(repr(k) for k in sorted(extra))
            raise JobError(f"unknown key{'s' if len(extra) > 1 else ''} {names}")
        resume = None if stored else obj.get("resume")
        if resume is not None:
            _expect("resume", resume, (str,), "a job id")
            if not valid_job_id(resume):
                raise JobError(f"resume: invalid job id {resume!r}")
        agent = obj.get("agent")
        if agent is None and resume is None:
            raise JobError("missing key 'agent'")
        if agent is not None:
            _expect("agent", agent, (str,), "a string")
            _text("agent", agent)
            self._agent(agent)
        prompt = obj.get("prompt")
        if prompt is None:
            raise JobError("missing key 'prompt'")
        _expect("prompt", prompt, (str,), "a string")
        _text("prompt", prompt)
        if not prompt.strip():
            raise JobError("empty prompt")
        if len(prompt) > PROMPT_MAX_BYTES // 4 and len(prompt.encode()) > PROMPT_MAX_BYTES:
            raise JobError(f"prompt: {len(prompt.encode())} bytes, over the limit of "
                           f"{PROMPT_MAX_BYTES} (16 MiB)")
        repos = obj.get("repos")
        if repos is None:
            repos = []
        _expect("repos", repos, (list,), "a list of repository names")
        for repo in repos:
            _expect("repos", repo, (str,), "a list of repository names")
            _text("repos", repo)
            if self.known is not None and repo not in self.known.repos:
                raise JobError(f"unknown repository {repo!r}")
        if len(set(repos)) != len(repos):
            raise JobError("repos lists a repository twice")
        if repos and resume is not None:
            raise JobError("repos cannot be given with resume: the resumed job's repositories "
                           "and workspace are used")
        callback = obj.get("callback")
        if callback is not None:
            _expect("callback", callback, (str,), "a URL string")
            _text("callback", callback)
            self._url(callback)
        timeout = obj.get("timeout")
        if timeout is not None:
            _expect("timeout", timeout, (str, int, float), "a duration (seconds or '30s')")
            timeout = self._duration(timeout)
        idle = obj.get("idle_timeout")
        if idle is not None:
            _expect("idle_timeout", idle, (str, int, float), "a duration (seconds or '30s')")
            idle = self._duration(idle, "idle_timeout")
        batch = obj.get("batch")
        if batch is not None:
            _expect("batch", batch, (str,), "a string")
            _text("batch", batch)
            if not batch.strip():
                raise JobError("batch must not be empty")
        job_id = obj.get("id")
        if job_id is not None:
            _expect("id", job_id, (str,), "a string")
            if not valid_job_id(job_id):
                raise JobError(f"invalid job id {job_id!r} "
                               "(expected [A-Za-z0-9][A-Za-z0-9._-]{0,63})")
            if self.known is not None and job_id in self.known.ids:
                raise JobError(f"job id {job_id!r} is already in use")
        elif stored:
            raise JobError("missing key 'id'")
        exclusive = obj.get("exclusive", False)
        _expect("exclusive", exclusive, (bool,), "true or false")
        job = {"id": job_id, "agent": agent, "prompt": prompt, "repos": repos,
               "callback": callback, "timeout": timeout, "batch": batch,
               "exclusive": exclusive, "idle_timeout": idle}
        if resume is not None:
            job["resume"] = resume
        push = self._push(obj.get("push"), job_id, repos, stored=stored,
                          resumed=resume is not None or
                          (stored and obj.get("resume_of") is not None))
        if push is not None:
            job["push"] = push
        job.update(_job_control(obj, job_id))
        if stored:
            created = obj.get("created_at")
            if created is not None:
                _expect("created_at", created, (str,), "an ISO-8601 time")
                _text("created_at", created)
                job["created_at"] = created
            retry_of = obj.get("retry_of")
            if retry_of is not None:
                if not valid_job_id(retry_of):
                    raise JobError(f"retry_of {retry_of!r} is not a job id")
                job["retry_of"] = retry_of
            job.update(_stored_resume(obj))
        return job


def check_push(repos: list[str], unpushable: tuple[tuple[str, str], ...]) -> None:
    """JobError when a job that pushes (`push`) has no repository, or names one whose URL
    takes no push (Known.unpushable)."""
    if not repos:
        raise JobError("push needs a repository to push to (give repos, --repo R)")
    for name, why in unpushable:
        if name in repos:
            raise JobError(f"push: repository {name!r} cannot be pushed to: {why}")


def _unpushable(repos: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, why) for each repository whose URL takes no push (state.repos.push_refusal)."""
    return tuple((name, why) for name, repo in sorted(repos.items())
                 if (why := push_refusal(repo.url)) is not None)


def _stored_resume(obj: dict[str, Any]) -> dict[str, Any]:
    """The resume keys of a job as a request carries it (resolved at the door): all of
    resume_of and workspace (an absolute path), or none; resume_session a string or null."""
    resume_of, workspace = obj.get("resume_of"), obj.get("workspace")
    session = obj.get("resume_session")
    if resume_of is None and workspace is None and session is None:
        return {}
    if resume_of is None or workspace is None:
        raise JobError("resume_of and workspace go together (a resumed job runs in the "
                       "workspace of the job it resumes)")
    _expect("resume_of", resume_of, (str,), "a job id")
    if not valid_job_id(resume_of):
        raise JobError(f"resume_of: invalid job id {resume_of!r}")
    _expect("workspace", workspace, (str,), "an absolute path")
    _text("workspace", workspace)
    if not os.path.isabs(workspace):
        raise JobError(f"workspace must be an absolute path, found {workspace!r}")
    if session is not None:
        _expect("resume_session", session, (str,), "a string")
        _text("resume_session", session)
    return {"resume_of": resume_of, "resume_session": session, "workspace": workspace}


#: What a job carries in a submit request (the scheduler's check): a submission cannot set
#: a job's state, attempts or pid. `resume` is resolved at the door into the other three.
_STORED_KEYS = (SUBMIT_KEYS - {"resume"}) | {"created_at", "retry_of", "resume_of",
                                             "resume_session", "workspace"}

PRIORITY_RANGE = (-1000, 1000)
MAX_RETRIES = 10
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_MAX_LABEL_VALUE = 256


def _ids(key: str, value: object, own: str | None) -> list[str]:
    if not isinstance(value, list) or not value:
        raise JobError(f"{key} must be a non-empty list of job ids")
    for dep in value:
        if not valid_job_id(dep):
            raise JobError(f"{key}: {dep!r} is not a job id")
        if dep == own:
            raise JobError(f"{key}: a job cannot wait for itself ({dep!r})")
    if len(set(value)) != len(value):
        raise JobError(f"{key} lists a job twice")
    return list(value)


def _labels(value: object) -> dict[str, str]:
    if type(value) is not dict:
        raise JobError(f"labels must be an object of strings, found {_tname(value)}")
    for key, val in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise JobError(f"label key {key!r} must be 1-64 letters, digits, '.', '_', '/', "
                           "'-', starting with a letter or digit")
        if not isinstance(val, str) or len(val) > _MAX_LABEL_VALUE or _URL_BAD_CHAR.search(
                val.replace(" ", "")):
            raise JobError(f"label {key!r}: the value must be a string of at most "
                           f"{_MAX_LABEL_VALUE} characters without control characters")
        _text(f"label {key!r}", val)
    return dict(value)


def _job_control(obj: dict[str, Any], own: str | None) -> dict[str, Any]:
    """The job-control keys of a job, checked and normalized; only those given (defaults
    are not stored: no priority is 0, no labels is {}, ...)."""
    out: dict[str, Any] = {}
    for key in ("after", "after_any"):
        if obj.get(key) is not None:
            out[key] = _ids(key, obj[key], own)
    if out.get("after") and out.get("after_any"):
        both = set(out["after"]) & set(out["after_any"])
        if both:
            raise JobError(f"after and after_any both name {sorted(both)[0]!r}")
    priority = obj.get("priority")
    if priority is not None:
        _expect("priority", priority, (int,), "an integer")
        low, high = PRIORITY_RANGE
        if not low <= priority <= high:
            raise JobError(f"priority {priority} is outside {low}..{high}")
        if priority:
            out["priority"] = priority
    not_before = obj.get("not_before")
    if not_before is not None:
        _expect("not_before", not_before, (str,), "an ISO-8601 time")
        when = parse_iso(not_before)
        if when is None:
            raise JobError(f"not_before {not_before!r} is not an ISO-8601 time "
                           "(e.g. 2027-01-15T08:00:00Z)")
        out["not_before"] = iso_now(when)
    labels = obj.get("labels")
    if labels is not None:
        labels = _labels(labels)
        if labels:
            out["labels"] = labels
    retries = obj.get("retries")
    if retries is not None:
        _expect("retries", retries, (int,), "an integer")
        if not 0 <= retries <= MAX_RETRIES:
            raise JobError(f"retries {retries} is outside 0..{MAX_RETRIES}")
        if retries:
            out["retries"] = retries
    return out


def check_request(req: dict[str, Any]) -> list[dict[str, Any]]:
    """The jobs of a submit request, each checked by the one validator (shape only, ids
    given and distinct), normalized; JobError naming the first problem (jobs[i])."""
    jobs = req.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise JobError("'jobs' must be a non-empty list")
    checker = Checker(None)
    check = checker.check
    seen: set[str] = set()
    out = []
    for i, job in enumerate(jobs):
        try:
            checked = check(job, stored=True)
        except JobError as exc:
            ident = job.get("id") if isinstance(job, dict) else None
            raise JobError(f"jobs[{i}]{f' ({ident})' if isinstance(ident, str) else ''}: "
                           f"{exc}") from None
        if checked["id"] in seen:
            raise JobError(f"jobs[{i}].id {checked['id']!r} appears twice in the request")
        seen.add(checked["id"])
        out.append(checked)
    return out


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


def _no_constant(name: str) -> Any:
    """parse_constant: NaN, Infinity and -Infinity are Python's, not JSON's."""
    raise JobError(f"invalid JSON: {name} is not a JSON value")


_decode_line = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys,
                                parse_constant=_no_constant).decode


def decode_json(text: str) -> Any:
    """One JSON document as a submission reads it: a key given twice in an object, NaN or
    Infinity, nesting too deep for the parser, or a number too long to convert (Python's
    4300-digit cap) is a JobError naming it; bad JSON is json.JSONDecodeError."""
    try:
        return _decode_line(text)
    except json.JSONDecodeError:
        raise
    except (RecursionError, ValueError) as exc:
        raise _undecodable(exc) from None


def _undecodable(exc: RecursionError | ValueError) -> JobError:
    """What JSON too deep for the parser, or a number past Python's 4300-digit cap
    (int("9" * 5000): ValueError), is to a submission."""
    if isinstance(exc, RecursionError):
        return JobError("invalid JSON: nested too deeply")
    return JobError(f"invalid JSON: a number too long to read "
                    f"({str(exc).split(':')[0].lower()})")


def parse_jsonl(data: bytes, name: str, checker: Checker) -> list[dict[str, Any]]:
    """Every job of a JSONL file, in order; JobError naming `name:line` otherwise.

    A key given twice in one object is refused (JSON would silently keep the last one).
    Lines are strict UTF-8; a UTF-8 byte order mark at the start of the file is skipped.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    jobs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    check = checker.check
    decode = _decode_line                # decode_json's errors, without its frame per line
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
            except (RecursionError, ValueError) as exc:
                raise _undecodable(exc) from None
            job = check(obj)
            job_id = job["id"]
            if job_id is not None:
                first = seen.setdefault(job_id, lineno)
                if first != lineno:
                    raise JobError(f"duplicate job id {job_id!r} (also on line {first})")
        except JobError as exc:
            raise JobError(f"{name}:{lineno}: {exc}") from None
        jobs.append(job)
    return jobs


def assign_ids(jobs: list[dict[str, Any]], in_use: Container[str], *,
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


class SubmitLock:
    """The exclusive flock on `scheduler/submit.lock` (created empty if missing), taken and
    given back by hand: a long-lived submitter (the api) holds it over several writes in
    flight. Its folder is made durable once per process (not on every submission)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock; blocks while another submitter holds it."""
        assert self._fd is None, "the submit lock is held already"
        path = self.layout.submit_lock
        folder = str(path.parent)
        if folder not in _LOCK_DIRS:
            ensure_dir(path.parent)
            _LOCK_DIRS.add(folder)
        try:
            fd = open_lock_file(path)
        except FileNotFoundError:       # the folder went away since: make it again next time
            _LOCK_DIRS.discard(folder)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (closing the file drops the flock); nothing when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@contextmanager
def submit_lock(layout: Layout) -> Iterator[None]:
    """Hold the exclusive flock on `scheduler/submit.lock` (SubmitLock) for the block;
    blocks while another submitter holds it; released when the block ends (or the
    process dies)."""
    lock = SubmitLock(layout)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


#: submit.lock folders this process has made durable.
_LOCK_DIRS: set[str] = set()


def write_submission(layout: Layout, jobs: list[dict[str, Any]], *,
                     now: float | None = None, fs: FS = REAL) -> Path:
    """The ONE durable request file carrying `jobs` (each gets created_at); its path."""
    request = submit_request(jobs, now=time.time() if now is None else now)
    created = request["created_at"]                     # the request's instant, once
    for job in jobs:
        job["created_at"] = created
    return send_request(layout, "scheduler", request, fs=fs)


def log_submission(log: SubmissionLog, jobs: list[dict[str, Any]], *,
                   now: float | None = None) -> int:
    """The ONE durable record of the api's submission log carrying `jobs` (each gets
    created_at, as write_submission); its seq."""
    request = submit_request(jobs, now=time.time() if now is None else now)
    created = request["created_at"]
    for job in jobs:
        job["created_at"] = created
    return log.append(request)


def known_repos(cfg: Config, layout: Layout) -> frozenset[str]:
    """Repository names a job may use: the config's plus those registered with `repo add`."""
    return frozenset(all_repositories(cfg, layout))


def known(cfg: Config, layout: Layout) -> Known:
    """What a submission to this state dir is checked against (ids in use: see accept)."""
    refused = tuple((name, why) for name, agent in sorted(cfg.agents.items())
                    if (why := refusal(agent)) is not None)
    repos = all_repositories(cfg, layout)
    return Known(agents=frozenset(cfg.agents), repos=frozenset(repos), ids=frozenset(),
                 refused=refused, unpushable=_unpushable(repos))


class KnownCache:
    """known() for a long-lived door (the api): made again only when the repository
    registry changed (its file is replaced whole by a rename: a new inode, size or mtime),
    since the configuration of the process does not change."""

    def __init__(self, cfg: Config, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout
        self._path = os.fspath(layout.repos_file)
        self._stamp: tuple[int, int, int, int] | None = None
        self._known: Known | None = None

    def get(self) -> Known:
        """What a submission is checked against now."""
        stamp = file_stamp(self._path)
        if self._known is None or stamp != self._stamp:
            self._known = known(self.cfg, self.layout)   # read after the stat: never stale
            self._stamp = stamp
        return self._known


def accept(cfg: Config, layout: Layout, jobs: list[dict[str, Any]], *,
           source: tuple[str, bytes] | None = None) -> list[str]:
    """The door's last step for checked jobs: under submit_lock, refuse ids in use
    (inbox first, then queue), give the others fresh ids, write the ONE durable request;
    the ids, in order. JobError for an id in use; Unreadable when the ids in use cannot
    be read (duplicates could not be checked); DiskLow below `disk.min_free`."""
    why = disk.low(cfg)
    if why is not None:
        raise DiskLow(f"submission refused: {why}")
    with submit_lock(layout):
        with open_view(cfg, layout) as view:
            in_use = frozenset(view.known_ids())
            refuse_ids_in_use(jobs, in_use, source)
            refuse_left_folders(layout, jobs, source)
            resolve_resumes(cfg, view, jobs, source)
        refuse_unknown_dependencies(jobs, in_use, source)
        assign_ids(jobs, in_use)
        write_submission(layout, jobs)
    return [str(j["id"]) for j in jobs]


class Refused(JobError):
    """A submission of accept_many that was not taken: an id in use by another job."""


def same_job(entry: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether a known job (a view entry) is what the checked `job` describes: a client's
    replay of a submission it could not see answered."""
    return all(entry.get(k) == v for k, v in job.items() if k not in ("id", "created_at"))


def accept_many(cfg: Config, layout: Layout, groups: list[list[dict[str, Any]]], *,
                queue_ids: QueueIds | None = None,
                pending_ids: PendingIds | None = None) -> list[list[str] | Exception]:
    """accept() for many submissions at once (the api's concurrent POSTs): ONE lock, ONE
    read of the ids in use (ids_in_use), ONE durable request holding every accepted job
    (take_many decides, write_taken writes); per submission, its ids or why it was
    refused. DiskLow as accept()."""
    why = disk.low(cfg)
    if why is not None:
        raise DiskLow(f"submission refused: {why}")
    with submit_lock(layout):
        given = {j["id"] for g in groups for j in g if j["id"] is not None}
        in_use, existing = ids_in_use(cfg, layout, given, queue_ids=queue_ids,
                                      pending_ids=pending_ids)
        taken = take_many(cfg, layout, groups, in_use, existing)
        return write_taken(layout, taken)


class InUse:
    """The ids in use, as the layers they were read from (the inbox's, the queue's, the
    writes in flight) plus those given out since: membership is asked of each layer, so a
    decision never copies the queue's ids (100,000 of them, for a one-job POST)."""

    def __init__(self, *layers: Container[str]) -> None:
        self._layers = layers
        self.added: set[str] = set()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.added or any(job_id in layer for layer in self._layers)

    def update(self, ids: Iterable[str]) -> None:
        """Count `ids` as in use from now on."""
        self.added.update(ids)


def ids_in_use(cfg: Config, layout: Layout, given: set[str], *,
               queue_ids: QueueIds | None = None, pending_ids: PendingIds | None = None,
               also: AbstractSet[str] = frozenset(), logged: Container[str] = frozenset(),
               ) -> tuple[InUse, dict[str, dict[str, Any] | None]]:
    """(every id in use, the known job of each `given` id in use) for take_many, read
    under the submit lock: the inbox's ids (read first, as open_view does: the scheduler
    enqueues a request's jobs before it removes the request), then the queue's, plus
    `also` (ids the caller is writing: the api's writes in flight) and `logged` (the ids
    of the api's submission log not enqueued yet: asked, never copied). From `queue_ids` and
    `pending_ids` when given (long-lived readers: the queue's ids are their live set, not
    a copy), else from a read-only open of the queue. The full view is opened for the
    known jobs only when a given id is in use (a replay to compare). Unreadable when the
    ids cannot be read."""
    if queue_ids is None:
        with open_view(cfg, layout) as view:
            in_use = InUse(set(view.known_ids()), also)
            return in_use, {i: view.get(i) for i in given if i in in_use}
    pending: Container[str] = pending_ids.refresh() if pending_ids is not None else \
        set(read_pending(layout).jobs)
    try:
        queued = queue_ids.refresh()
    except OSError as exc:
        raise Unreadable(f"cannot read the job queue at {layout.wal_dir}: "
                         f"{exc.strerror or exc}") from None
    in_use = InUse(pending, queued, also, logged)
    existing: dict[str, dict[str, Any] | None] = {}
    replays = [i for i in given if i in in_use]
    if replays:                         # a replay to compare: the full view, rarely
        with open_view(cfg, layout) as view:
            existing = {i: view.get(i) for i in replays}
    return in_use, existing


@dataclass
class Taken:
    """What take_many decided: per submission its ids or why it was refused (`results`),
    and the jobs to write for each one taken (`new`: index in results, its new jobs; a
    replay's are not written again)."""

    results: list[list[str] | Exception]
    new: list[tuple[int, list[dict[str, Any]]]]

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Every job to write, in order."""
        return [job for _, jobs in self.new for job in jobs]


def take_many(cfg: Config, layout: Layout, groups: list[list[dict[str, Any]]],
              in_use: InUse, existing: dict[str, dict[str, Any] | None]) -> Taken:
    """Decide each submission against the ids in use (ids_in_use; `in_use` gains the ids
    given out), under the submit lock. Each stays all or nothing. A job whose given id is
    in use by the very same job (same_job) is a replay: it counts as accepted and is not
    written again; an id in use by another job refuses its whole submission (Refused); so
    does a dependency that does not exist (JobError, as accept()), and a `resume` that
    cannot be (as accept()). One submission's failure is never another's: an unexpected
    error while taking one (a bug, a job the validator should have refused) is that
    submission's result."""
    out: list[list[str] | Exception] = []
    taken: list[tuple[int, list[dict[str, Any]]]] = []
    for jobs in groups:
        try:
            if any("resume" in j for j in jobs):      # rare: a full view to resolve
                with open_view(cfg, layout) as view:
                    resolve_resumes(cfg, view, jobs)
            for job in jobs:
                known = existing.get(job["id"]) if job["id"] is not None else None
                if job["id"] in in_use and (known is None or not same_job(known, job)):
                    raise Refused(f"job id {job['id']!r} is already in use by another job")
                if job["id"] is not None and job["id"] not in in_use:
                    refuse_left_folders(layout, [job], refused=Refused)
            new = [j for j in jobs if j["id"] is None or j["id"] not in existing]
            refuse_unknown_dependencies(new, in_use)
        except Exception as exc:   # noqa: BLE001 - this submission's failure, only its
            out.append(exc)
            continue
        assign_ids(new, in_use)
        in_use.update(str(j["id"]) for j in new)
        taken.append((len(out), new))
        out.append([str(j["id"]) for j in jobs])
    return Taken(out, taken)


def write_taken(layout: Layout, taken: Taken, *, fs: FS = REAL,
                log: SubmissionLog | None = None) -> list[list[str] | Exception]:
    """Write what take_many took as ONE durable request (a request file in the
    scheduler's inbox, or with `log` one record of the api's submission log); per
    submission its ids or why it failed. Should the shared write fail for anything but
    the disk (OSError, which is every submission's: raised), each submission is written
    on its own request, so only the one that cannot be written fails (JobError saying
    why), the others are accepted."""
    def write(jobs: list[dict[str, Any]]) -> None:
        if log is None:
            write_submission(layout, jobs, fs=fs)
        else:
            log_submission(log, jobs)

    out = list(taken.results)
    fresh = taken.jobs
    if not fresh:
        return out
    try:
        write(fresh)
    except OSError:
        raise                   # the disk: every submission's failure
    except Exception:          # noqa: BLE001 - one submission's content: find it
        for index, new in taken.new:
            if not new:
                continue
            try:
                write(new)
            except OSError as exc:
                out[index] = exc
            except Exception as exc:   # noqa: BLE001 - what it holds: its own
                out[index] = JobError(f"the submission cannot be recorded: {exc}")
    return out


def resolve_resumes(cfg: Config, view: JobView, jobs: list[dict[str, Any]],
                    source: tuple[str, bytes] | None = None) -> None:
    """Turn each job's `resume` (a job id) into what the scheduler needs to continue that
    job's session (see the module docstring); JobError for the first that cannot be, its
    line named when `source` (the --from file's name and bytes) is given."""
    for index, job in enumerate(jobs):
        target = job.pop("resume", None)
        if target is None:
            continue
        try:
            job.update(_resume_of(cfg, view, str(target), job.get("agent")))
            if job.get("push") is not None:
                check_push(job["repos"], _unpushable(all_repositories(cfg, view.layout)))
        except JobError as exc:
            where = "" if source is None else f"{source[0]}:{_line_of(source[1], index)}: "
            raise JobError(f"{where}{exc}") from None


def _resume_of(cfg: Config, view: JobView, target: str, given: object) -> dict[str, Any]:
    entry = view.get(target)
    if entry is None:
        raise JobError(f"resume: no such job {target!r}")
    state = str(entry.get("state"))
    if state not in TERMINAL_STATES:
        raise JobError(f"resume: job {target!r} is {state}: only a finished job's session "
                       "can be resumed")
    name = str(entry.get("agent"))
    if given is not None and given != name:
        raise JobError(f"resume: job {target!r} ran agent {name!r}, not {given!r} (a resumed "
                       "session keeps its agent)")
    agent = cfg.agents.get(name)
    if agent is None:
        raise JobError(f"resume: job {target!r} ran agent {name!r}, which is no longer "
                       "configured")
    why = refusal(agent)
    if why is not None:
        raise JobError(f"agent {name!r} {why}")
    session = entry.get("session_id")
    session = session if isinstance(session, str) and session else None
    if session is None and agent.adaptor not in DIRECTORY_SESSIONS:
        raise JobError(f"resume: job {target!r} has no session id (its agent reported none)")
    workspace = entry.get("workspace")
    if not isinstance(workspace, str) or not os.path.isdir(workspace):
        raise JobError(f"resume: the workspace of job {target!r} ({workspace}) no longer "
                       "exists")
    return {"agent": name, "repos": [str(r) for r in entry.get("repos") or []],
            "resume_of": target, "resume_session": session, "workspace": workspace}


def refuse_unknown_dependencies(jobs: list[dict[str, Any]], in_use: Container[str],
                                source: tuple[str, bytes] | None = None) -> None:
    """JobError for the first job whose `after`/`after_any` names a job that neither
    exists nor comes earlier in the same submission: so no cycle can ever be made."""
    earlier: set[str] = set()
    for index, job in enumerate(jobs):
        for key in ("after", "after_any"):
            for dep in job.get(key) or ():
                if dep not in in_use and dep not in earlier:
                    where = "" if source is None else \
                        f"{source[0]}:{_line_of(source[1], index)}: "
                    later = any(j.get("id") == dep for j in jobs[index + 1:])
                    why = "comes later in the file" if later else "does not exist"
                    raise JobError(f"{where}{key}: job {dep!r} {why} (a job can only wait "
                                   "for jobs submitted before it)")
        if job.get("id") is not None:
            earlier.add(str(job["id"]))


def refuse_ids_in_use(jobs: list[dict[str, Any]], in_use: frozenset[str],
                      source: tuple[str, bytes] | None = None) -> None:
    """JobError for the first job whose given id is in use; with `source` (the --from
    file's name and bytes) the message names its line."""
    if not in_use.intersection(j["id"] for j in jobs if j["id"] is not None):
        return
    for index, job in enumerate(jobs):
        if job["id"] in in_use:
            where = "" if source is None else f"{source[0]}:{_line_of(source[1], index)}: "
            raise JobError(f"{where}job id {job['id']!r} is already in use")


def refuse_left_folders(layout: Layout, jobs: list[dict[str, Any]],
                        source: tuple[str, bytes] | None = None, *,
                        refused: type[JobError] = JobError) -> None:
    """`refused` for the first job whose given id (not in use: checked before) still has a
    folder under jobs/: left by a job the queue no longer knows (its log quarantined as
    corrupt). A new job under that id would run among the old one's files and read its
    result. One stat per given id; generated ids never collide."""
    for index, job in enumerate(jobs):
        job_id = job["id"]
        if job_id is not None and os.path.lexists(layout.job_dir(str(job_id))):
            where = "" if source is None else f"{source[0]}:{_line_of(source[1], index)}: "
            raise refused(f"{where}job id {job_id!r} is already in use: its folder "
                          f"{layout.job_dir(str(job_id))} exists (left by a job the queue no "
                          "longer knows: remove the folder to reuse the id)")


def _line_of(data: bytes, index: int) -> int:
    """The line number of the job at `index` of a JSONL file (blank lines hold no job)."""
    job_lines = (n for n, line in enumerate(data.split(b"\n"), 1) if line.strip())
    return next(islice(job_lines, index, None))
