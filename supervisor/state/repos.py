"""Repositories: the `repo add` registry (repos.json), merged with the config's.

The registry, `<state_dir>/repos.json` (kind REPOS):

    {"repos": {NAME: {"url", "branch", "exclusive", "added_at"}}, "schema", "v"}

Written ONLY by batchctl (`repo add` / `repo remove`, through add() and remove()), under an
exclusive flock on `<state_dir>/repos.lock`, by write_record (temp file, fsync, rename,
fsync folder): a crash leaves the old registry or the new one, never a mix, and a crash
before the rename only leaves a `.tmp.` file the reaper removes. The read-check-write of
one command happens entirely under the flock, so two concurrent `repo add`s both land
(neither overwrites the other's entry). The lock file is created empty (O_CREAT) and never
written, replaced or removed; the kernel drops the flock when its holder dies, so a crash
cannot leave it held. Everything is checked before the lock is taken and again under it;
a refused command writes nothing. A branch is resolved (`git ls-remote --symref URL HEAD`)
before the lock is taken, so a slow remote never blocks another `repo add`.

Everyone else reads the registry with owner=False (registered(), all_repositories()): a
corrupt file reads as an empty registry there. batchctl, its owner, moves a corrupt one
aside (`repos.json.corrupted.<ts>`) when it next writes, and says so. An entry of the
wrong shape (hand edits) is skipped by readers and carried over unchanged by writers.

Mirrors of the repositories are the scheduler's (scheduler.mirrors).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import (
    NAME_PATTERN,
    Config,
    RepoConfig,
    check_branch,
    check_repo_url,
)
from supervisor.state.atomic import Corrupt, Missing, ensure_dir, read_json
from supervisor.state.clock import iso_now
from supervisor.state.flock import exclusive
from supervisor.state.fs import REAL
from supervisor.state.git import GitError, run_git
from supervisor.state.layout import REPOS, Layout, write_record

__all__ = [
    "LS_REMOTE_TIMEOUT",
    "Registry",
    "RepoError",
    "add",
    "all_repositories",
    "default_branch",
    "head_branch",
    "push_refusal",
    "read_registry",
    "registered",
    "registry_lock",
    "remove",
]

#: Seconds `git ls-remote` may take when `repo add` resolves the default branch.
LS_REMOTE_TIMEOUT = 120.0
_NAME_HELP = "1-64 letters, digits, '.', '_', '-', starting with a letter or digit"


class RepoError(Exception):
    """A refused or failed `repo add/remove`; `usage` is True for bad input (exit 2)."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Registry:
    """repos.json as read: the raw entries (kept as they are on rewrite), the usable ones,
    and what was wrong (a corrupt file, skipped entries), if anything."""

    raw: dict[str, Any]
    repos: dict[str, RepoConfig]
    added_at: dict[str, str | None]
    problems: tuple[str, ...] = ()


# --------------------------------------------------------------------------- git


def head_branch(ls_remote: str) -> str | None:
    """The branch of `ls-remote --symref ... HEAD` output ("ref: refs/heads/B\tHEAD")."""
    for line in ls_remote.splitlines():
        ref, _, target = line.partition("\t")
        if target == "HEAD" and ref.startswith("ref: refs/heads/"):
            return ref[len("ref: refs/heads/"):]
    return None


def default_branch(url: str, *, timeout: float = LS_REMOTE_TIMEOUT) -> str:
    """The remote's default branch (its HEAD); RepoError (exit 1) if it cannot be told."""
    try:
        out = run_git(["ls-remote", "--symref", "--", url, "HEAD"], timeout=timeout,
                      what="git ls-remote")
    except GitError as exc:
        reason = str(exc).removeprefix("git ls-remote failed: ")
        raise RepoError(f"cannot reach {url}: {reason}", usage=False) from None
    branch = head_branch(out)
    if branch is None:
        raise RepoError(f"cannot tell the default branch of {url}: its HEAD names no branch "
                        "(an empty repository?); give --branch", usage=False)
    return branch


# --------------------------------------------------------------------------- registry


def push_refusal(url: str) -> str | None:
    """Why `submit --push` cannot push to a repository at `url`, when the URL alone tells
    (None: it may; the push itself then says): the git protocol (`git://`, which git daemon
    serves read-only: it has no authentication, so receive-pack is off unless enabled by
    hand), or a local repository (a path or file:// URL) this process may not write."""
    if url.lower().startswith("git://"):
        return f"its URL {url} uses the read-only git protocol (git:// accepts no push)"
    path = url[len("file://"):] if url.lower().startswith("file://") else url
    if os.path.isabs(path) and os.path.isdir(path):
        objects = os.path.join(path, "objects")
        target = objects if os.path.isdir(objects) else os.path.join(path, ".git")
        if not os.access(path, os.W_OK) or (os.path.isdir(target)
                                             and not os.access(target, os.W_OK)):
            return f"its repository {path} is read-only (not writable)"
    return None


def _validate(obj: Any) -> str | None:
    problem = REPOS.validate(obj)
    if problem is None and not isinstance(obj["repos"], dict):
        problem = f"repos is {type(obj['repos']).__name__}, expected an object"
    return problem


def _entry(name: str, raw: Any) -> RepoConfig | str:
    """The RepoConfig of one registry entry, or why it is unusable."""
    if not NAME_PATTERN.fullmatch(name):
        return f"invalid repository name {name!r}"
    if not isinstance(raw, dict):
        return f"entry {name!r} is not an object"
    url, branch, exclusive = raw.get("url"), raw.get("branch"), raw.get("exclusive", False)
    if not isinstance(url, str) or not url:
        return f"entry {name!r} has no url"
    if branch is not None and not isinstance(branch, str):
        return f"entry {name!r}: branch is not a string"
    if not isinstance(exclusive, bool):
        return f"entry {name!r}: exclusive is not true or false"
    return RepoConfig(url=url, branch=branch or None, exclusive=exclusive)


def read_registry(layout: Layout, *, owner: bool = False) -> Registry:
    """repos.json. A corrupt file reads as empty (moved aside only if `owner`: batchctl)."""
    got = read_json(layout.repos_file, validate=_validate, move_corrupt=owner)
    if isinstance(got, Missing):
        return Registry({}, {}, {})
    if isinstance(got, Corrupt):
        moved = f"; moved aside as {got.moved_to}" if got.moved_to else ""
        return Registry({}, {}, {}, (f"{got.path} is corrupt ({got.reason}){moved}",))
    raw: dict[str, Any] = got["repos"]
    repos: dict[str, RepoConfig] = {}
    added: dict[str, str | None] = {}
    problems: list[str] = []
    for name, body in raw.items():
        entry = _entry(name, body)
        if isinstance(entry, str):
            problems.append(f"{layout.repos_file}: skipping {entry}")
            continue
        repos[name] = entry
        stamp = body.get("added_at")
        added[name] = stamp if isinstance(stamp, str) else None
    return Registry(raw, repos, added, tuple(problems))


def registered(layout: Layout) -> dict[str, RepoConfig]:
    """Repositories registered with `repo add` (read-only; {} if none or unreadable)."""
    return read_registry(layout).repos


def all_repositories(cfg: Config, layout: Layout) -> dict[str, RepoConfig]:
    """The configuration's repositories, then the registered ones (config wins a clash)."""
    out = dict(cfg.repositories)
    for name, repo in registered(layout).items():
        out.setdefault(name, repo)
    return out


@contextmanager
def registry_lock(layout: Layout) -> Iterator[None]:
    """Hold the exclusive flock on repos.lock (created empty if missing) for the block."""
    ensure_dir(layout.root)
    with exclusive(layout.repos_lock):
        yield


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise RepoError(f"invalid repository name {name!r} ({_NAME_HELP})", usage=True)


def _refuse_taken(cfg: Config, reg: Registry, name: str) -> None:
    if name in cfg.repositories:
        raise RepoError(f"repository {name!r} is already defined in the configuration "
                        f"({cfg.source}); choose another name", usage=True)
    if name in reg.raw:
        url = reg.repos[name].url if name in reg.repos else "?"
        raise RepoError(f"repository {name!r} is already registered ({url}); "
                        f"`batchctl repo remove {name}` first", usage=True)


def add(cfg: Config, layout: Layout, name: str, url: str, *, branch: str | None = None,
        exclusive: bool = False, base: Path | None = None, now: float | None = None,
        resolve: Callable[[str], str] = default_branch,
        note: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Register a repository; return its registry entry ({url, branch, exclusive, added_at}).

    RepoError(usage=True) for a bad name, URL or branch, or a name already configured or
    registered; RepoError(usage=False) if the remote's default branch cannot be resolved
    (only asked when `branch` is None). A local path is made absolute from `base` (the
    current folder). `note` hears about a corrupt registry moved aside. Nothing is written
    unless the entry is added.
    """
    _check_name(name)
    try:
        url = check_repo_url(url, base or Path.cwd(), os.environ.get("HOME"))
        if branch is not None:
            branch = check_branch(branch)
    except ValueError as exc:
        raise RepoError(f"repository {name!r}: {exc}", usage=True) from None
    _refuse_taken(cfg, read_registry(layout), name)
    if branch is None:
        branch = resolve(url)
    entry = {"url": url, "branch": branch, "exclusive": bool(exclusive),
             "added_at": iso_now(now)}
    with registry_lock(layout):
        reg = read_registry(layout, owner=True)
        _refuse_taken(cfg, reg, name)
        for problem in reg.problems:
            note(problem)
        write_record(REPOS, layout.repos_file, {"repos": {**reg.raw, name: entry}}, fs=REAL)
    return entry


def remove(cfg: Config, layout: Layout, name: str, *,
           note: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Unregister a repository; return the entry it had.

    RepoError(usage=True) for a malformed name; RepoError(usage=False) for a repository of
    the configuration (not removable here) or one not registered. Its mirror stays (only
    the scheduler writes mirrors); jobs waiting on it fail as "no longer known".
    """
    _check_name(name)
    if name in cfg.repositories:
        raise RepoError(f"repository {name!r} is defined in the configuration "
                        f"({cfg.source}), not registered: edit the configuration to remove "
                        "it", usage=False)
    with registry_lock(layout):
        reg = read_registry(layout, owner=True)
        for problem in reg.problems:
            note(problem)
        if name not in reg.raw:
            raise RepoError(f"no such repository: {name}", usage=False)
        left = {n: body for n, body in reg.raw.items() if n != name}
        write_record(REPOS, layout.repos_file, {"repos": left}, fs=REAL)
    body = reg.raw[name]
    return dict(body) if isinstance(body, dict) else {"url": None}
