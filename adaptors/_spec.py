"""The job spec an adaptor runs (`jobs/<id>/spec.json`), read and validated: `JobSpec`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JobSpec", "RepoSpec", "SpecError", "parse_spec"]


#: A job id (CONTRACT.md; state.jobs.JOB_ID_RE, not imported: the adaptor starts light).
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SpecError(ValueError):
    """spec.json is missing, corrupt, or a field has the wrong type (the message says which)."""


@dataclass(frozen=True)
class RepoSpec:
    """One repository of the job: its name, its clone in the workspace, the URL a push goes
    to, and `base`, the commit the clone was made at (None: an empty repository)."""

    name: str
    path: str
    url: str | None
    base: str | None


@dataclass(frozen=True)
class JobSpec:
    """What the scheduler asks for (`jobs/<id>/spec.json`), validated."""

    id: str
    agent: str
    adaptor: str
    command: str | None
    args: tuple[str, ...]
    env: Mapping[str, str]
    prompt: str
    model: str | None
    workspace: str
    job_dir: str
    timeout: float | None
    heartbeat_interval: float
    kill_grace: float
    user: str | None
    resume_session: str | None
    state_dir: str | None = None      # where the scheduler's inbox is (the exited hint)
    idle_timeout: float | None = None  # no output for this long: stopped, reason "idle"
    resume_of: str | None = None      # the job whose session this one continues
    output_max_bytes: int = 1 << 30   # the output file is cut here (head kept, marked once)
    repos: tuple[RepoSpec, ...] = ()  # whose changes are collected when the agent exits
    push: str | None = None           # the branch a completed job's changes are pushed to
    author: tuple[str, str] = ("batchd", "batchd@localhost")   # of the commit --push makes
    created_at: str | None = None     # the job's submission (the date of that commit)
    retry_of: str | None = None       # the job this one retries (its push may be replaced)


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise SpecError(f"{key}: expected a string or null, found {type(value).__name__}")


def _req_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise SpecError(f"{key}: expected a string, found {type(value).__name__}")
    return value


def _number(obj: Mapping[str, Any], key: str, default: float | None, *,
            positive: bool) -> float | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{key}: expected a number of seconds, found {value!r}")
    if value < 0 or (positive and value == 0):
        raise SpecError(f"{key}: must be {'> 0' if positive else '>= 0'}, found {value!r}")
    return float(value)


_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _repos(obj: Mapping[str, Any]) -> tuple[RepoSpec, ...]:
    value = obj.get("repos") or []
    if not isinstance(value, list):
        raise SpecError("repos: expected a list")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise SpecError(f"repos[{i}]: expected an object")
        name, path = _req_str(item, "name"), _req_str(item, "path")
        if not os.path.isabs(path):
            raise SpecError(f"repos[{i}].path: expected an absolute path, found {path!r}")
        base = _opt_str(item, "base")
        if base is not None and _SHA.fullmatch(base) is None:
            raise SpecError(f"repos[{i}].base: not a commit id: {base!r}")
        out.append(RepoSpec(name, path, _opt_str(item, "url"), base))
    return tuple(out)


def _author(obj: Mapping[str, Any]) -> tuple[str, str]:
    git = obj.get("git") or {}
    if not isinstance(git, dict):
        raise SpecError("git: expected an object")
    return (_opt_str(git, "author_name") or "batchd",
            _opt_str(git, "author_email") or "batchd@localhost")


def parse_spec(obj: Mapping[str, Any], job_dir: Path) -> JobSpec:
    """Validate a JOB_SPEC record for the job folder `job_dir`; SpecError names the bad key."""
    job_id = _req_str(obj, "id")
    if job_id != job_dir.name:
        raise SpecError(f"id: {job_id!r} does not match the job folder {job_dir.name!r}")
    args = obj.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SpecError("args: expected a list of strings")
    env = obj.get("env") or {}
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError("env: expected an object of string values")
    workspace = _req_str(obj, "workspace")
    if not os.path.isabs(workspace):
        raise SpecError(f"workspace: expected an absolute path, found {workspace!r}")
    command = _opt_str(obj, "command")
    if command == "":
        raise SpecError("command: empty string (use null for the adaptor's default binary)")
    adaptor = _req_str(obj, "adaptor")
    resume_of = _opt_str(obj, "resume_of")
    if resume_of is not None and _JOB_ID.fullmatch(resume_of) is None:
        raise SpecError(f"resume_of: not a job id: {resume_of!r}")
    retry_of = _opt_str(obj, "retry_of")
    if retry_of is not None and _JOB_ID.fullmatch(retry_of) is None:
        raise SpecError(f"retry_of: not a job id: {retry_of!r}")
    return JobSpec(
        id=job_id,
        agent=_opt_str(obj, "agent") or adaptor,
        adaptor=adaptor,
        command=command,
        args=tuple(args),
        env=dict(env),
        prompt=_req_str(obj, "prompt"),
        model=_opt_str(obj, "model"),
        workspace=workspace,
        job_dir=str(job_dir),
        timeout=_number(obj, "timeout", None, positive=True),
        heartbeat_interval=_number(obj, "heartbeat_interval", 5.0, positive=True) or 5.0,
        kill_grace=_number(obj, "kill_grace", 10.0, positive=False) or 0.0,
        user=_opt_str(obj, "user"),
        resume_session=_opt_str(obj, "resume_session"),
        state_dir=_opt_str(obj, "state_dir"),
        idle_timeout=_number(obj, "idle_timeout", None, positive=True),
        resume_of=resume_of,
        output_max_bytes=int(_number(obj, "output_max_bytes", 1 << 30, positive=True)
                             or (1 << 30)),
        repos=_repos(obj),
        push=_opt_str(obj, "push") or None,
        author=_author(obj),
        created_at=_opt_str(obj, "created_at"),
        retry_of=retry_of,
    )
