"""Repositories: the `repo add` registry (repos.json) merged with the config, and their mirrors.

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

Mirrors, `<mirrors_dir>/<name>.git` (mirrors_dir = `<state_dir>/mirrors`): a bare
`git clone --mirror` of the repository, written ONLY by the scheduler and ONLY while it
holds that repository's lock (so one process at a time touches one mirror). ensure_mirror():
- absent: `git clone --mirror URL <mirrors_dir>/.prep.<name>.git`, then rename into place
  and fsync the folder: the final name exists only once the mirror is complete. A crash
  mid-clone leaves the `.prep.` folder, which the next ensure_mirror of that name removes
  before anything else (only that name's: another repository's `.prep.` folder may be in
  use under its own lock). git runs with core.fsync=committed, so objects and refs are on
  disk before the rename.
- present: `git fetch --prune` (with a timeout). A failure raises MirrorError carrying
  git's stderr; the mirror is left as it was (fetch updates refs atomically).
- present but not a mirror of the repository's URL (a repository removed and registered
  again elsewhere, or not a git folder at all): renamed to the `.prep.` name (atomic),
  removed, and cloned afresh.
- a repository without a branch follows the remote's default branch: after the fetch the
  mirror's HEAD is pointed at the remote's HEAD (`ls-remote --symref`), so a clone of the
  mirror without --branch lands on the remote's current default.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
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
from supervisor.state.layout import REPOS, Layout, mirror_path, write_record

__all__ = [
    "FETCH_TIMEOUT",
    "LS_REMOTE_TIMEOUT",
    "MIRROR_PREP_PREFIX",
    "MirrorError",
    "Registry",
    "RepoError",
    "add",
    "all_repositories",
    "default_branch",
    "ensure_mirror",
    "git_command",
    "git_env",
    "read_registry",
    "registered",
    "registry_lock",
    "remove",
]

#: Seconds a `git fetch` (or a `git clone --mirror`) of one repository may take.
FETCH_TIMEOUT = 1800.0
#: Seconds `git ls-remote` may take when `repo add` resolves the default branch.
LS_REMOTE_TIMEOUT = 120.0
#: A mirror under construction (or being replaced) is `<mirrors_dir>/.prep.<name>.git`.
MIRROR_PREP_PREFIX = ".prep."

_STDERR_TAIL = 2000
_NAME_HELP = "1-64 letters, digits, '.', '_', '-', starting with a letter or digit"


class RepoError(Exception):
    """A refused or failed `repo add/remove`; `usage` is True for bad input (exit 2)."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


class MirrorError(Exception):
    """A mirror could not be made or refreshed; str() carries git's stderr."""


@dataclass(frozen=True)
class Registry:
    """repos.json as read: the raw entries (kept as they are on rewrite), the usable ones,
    and what was wrong (a corrupt file, skipped entries), if anything."""

    raw: dict[str, Any]
    repos: dict[str, RepoConfig]
    added_at: dict[str, str | None]
    problems: tuple[str, ...] = ()


# --------------------------------------------------------------------------- git


def git_env() -> dict[str, str]:
    """The environment of every git batchd runs: never prompt for a password, and give up
    on a remote that stalls (under 1 KiB/s for 60 s over http(s); no answer to 4 keepalives
    15 s apart over ssh) instead of holding the scheduler until the command's timeout."""
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"           # never wait for a password on a tty
    env.setdefault("GIT_SSH_COMMAND",
                   "ssh -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4")
    env.setdefault("GIT_HTTP_LOW_SPEED_LIMIT", "1024")
    env.setdefault("GIT_HTTP_LOW_SPEED_TIME", "60")
    return env


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def git_command(args: list[str]) -> list[str]:
    """The argv that runs `git ARGS` so that it dies with the process (thread) that started
    it: util-linux's `setpriv --pdeathsig KILL` (preexec_fn is not safe beside threads).
    A scheduler killed mid-clone then leaves no git writing into a mirror or workspace that
    its successor is about to redo. Without setpriv, plain git."""
    setpriv = _setpriv()
    if setpriv is None:
        return ["git", *args]
    return [setpriv, "--pdeathsig", "KILL", "--", "git", *args]


def _git(args: list[str], *, timeout: float, what: str) -> str:
    """Run git; its stdout, or MirrorError("<what> failed: <stderr>") / timed out."""
    try:
        proc = subprocess.run(git_command(args), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", env=git_env(), timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise MirrorError(f"{what}: git is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise MirrorError(f"{what} timed out after {timeout:g}s") from None
    if proc.returncode != 0:
        err = proc.stderr.strip()[-_STDERR_TAIL:] or f"exit status {proc.returncode}"
        raise MirrorError(f"{what} failed: {err}")
    return proc.stdout


def _head_branch(ls_remote: str) -> str | None:
    """The branch of `ls-remote --symref ... HEAD` output ("ref: refs/heads/B\\tHEAD")."""
    for line in ls_remote.splitlines():
        ref, _, target = line.partition("\t")
        if target == "HEAD" and ref.startswith("ref: refs/heads/"):
            return ref[len("ref: refs/heads/"):]
    return None


def default_branch(url: str, *, timeout: float = LS_REMOTE_TIMEOUT) -> str:
    """The remote's default branch (its HEAD); RepoError (exit 1) if it cannot be told."""
    try:
        out = _git(["ls-remote", "--symref", "--", url, "HEAD"], timeout=timeout,
                   what="git ls-remote")
    except MirrorError as exc:
        reason = str(exc).removeprefix("git ls-remote failed: ")
        raise RepoError(f"cannot reach {url}: {reason}", usage=False) from None
    branch = _head_branch(out)
    if branch is None:
        raise RepoError(f"cannot tell the default branch of {url}: its HEAD names no branch "
                        "(an empty repository?); give --branch", usage=False)
    return branch


# --------------------------------------------------------------------------- registry


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


# --------------------------------------------------------------------------- mirrors


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _mirror_url(path: Path) -> str | None:
    """The origin URL of the mirror at `path`, or None if it is not a usable git folder."""
    if not path.is_dir() or path.is_symlink():
        return None
    try:
        out = _git([f"--git-dir={path}", "config", "--get", "remote.origin.url"],
                   timeout=60.0, what="git config")
    except MirrorError:
        return None
    return out.strip() or None


def _follow_head(name: str, repo: RepoConfig, path: Path, timeout: float) -> None:
    """Point the mirror's HEAD at the remote's default branch (if it has one)."""
    gitdir = f"--git-dir={path}"
    out = _git([gitdir, "ls-remote", "--symref", "origin", "HEAD"], timeout=timeout,
               what=f"git ls-remote of repository {name!r} ({repo.url})")
    branch = _head_branch(out)
    if branch is None:
        return
    want = f"refs/heads/{branch}"
    have = _git([gitdir, "symbolic-ref", "-q", "HEAD"], timeout=60.0,
                what=f"reading the HEAD of the mirror of {name!r}").strip()
    if have != want:
        _git([gitdir, "symbolic-ref", "HEAD", want], timeout=60.0,
             what=f"setting the HEAD of the mirror of {name!r}")


def ensure_mirror(name: str, repo: RepoConfig, mirrors_dir: str | os.PathLike[str], *,
                  timeout: float = FETCH_TIMEOUT) -> Path:
    """Create (clone --mirror) or refresh (fetch --prune) the mirror of `name`; its path.

    The caller (the scheduler) holds the repository's lock. MirrorError with git's stderr
    if the remote cannot be cloned or fetched; an existing mirror is then left as it was.
    """
    folder = Path(mirrors_dir)
    path = mirror_path(folder, name)
    staging = folder / f"{MIRROR_PREP_PREFIX}{path.name}"
    _remove_tree(staging)                    # a crash mid-clone or mid-replacement
    if (path.exists() or path.is_symlink()) and _mirror_url(path) != repo.url:
        os.rename(path, staging)             # not ours (any more): out of the way, atomically
        REAL.fsync_dir(str(folder))
        _remove_tree(staging)
    if not path.exists():
        ensure_dir(folder)
        try:
            _git(["-c", "core.fsync=committed", "clone", "--mirror", "--quiet", "--",
                  repo.url, str(staging)], timeout=timeout,
                 what=f"git clone --mirror of repository {name!r} ({repo.url})")
            os.rename(staging, path)
        except BaseException:
            _remove_tree(staging)
            raise
        REAL.fsync_dir(str(folder))
        return path
    _git(["-c", "core.fsync=committed", f"--git-dir={path}", "fetch", "--prune", "--quiet",
          "origin"], timeout=timeout,
         what=f"git fetch of repository {name!r} ({repo.url}) into its mirror")
    if repo.branch is None:
        _follow_head(name, repo, path, timeout)
    return path

