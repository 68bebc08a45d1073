"""Mirrors of the repositories (`mirrors/<name>.git`): made and fetched by the scheduler alone.

A bare `git clone --mirror` of each repository, written ONLY by the scheduler and ONLY
while it holds that repository's lock (so one process at a time touches one mirror).
ensure_mirror():
- absent: `git clone --mirror URL <mirrors_dir>/.prep.<name>.git`, then rename into place
  and fsync the folder: the final name exists only once the mirror is complete. A crash
  mid-clone leaves the `.prep.` folder, which the next ensure_mirror of that name removes
  before anything else (only that name's: another repository's `.prep.` folder may be in
  use under its own lock). git runs with core.fsync=committed, so objects and refs are on
  disk before the rename.
- present: `git fetch --prune` (with a timeout). Any gc the fetch sets off runs in it
  (gc.autoDetach=false), not in the background: nothing changes the mirror's files
  once the fetch (and the repository's lock) is over, so reading it is safe for whoever
  then holds its in-process lock (scheduler.ahead). A failure raises MirrorError carrying
  git's stderr; the mirror is left as it was (fetch updates refs atomically).
- present and already up to date: nothing is run. For a remote on this machine (a path or
  a file:/// URL) its refs and HEAD are read from its files and compared with the
  mirror's (state.gitrefs, no git process): equal, the fetch would bring nothing. For any
  other remote without a branch, the `ls-remote --symref` that follows its HEAD is run
  first and compared the same way. Anything that cannot be read simply means "fetch".
- present but not a mirror of the repository's URL (a repository removed and registered
  again elsewhere, or not a git folder at all): renamed to the `.prep.` name (atomic),
  removed, and cloned afresh.
- a repository without a branch follows the remote's default branch: after the fetch the
  mirror's HEAD is pointed at the remote's HEAD (`ls-remote --symref`), so a clone of the
  mirror without --branch lands on the remote's current default.
"""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.config import RepoConfig
from supervisor.state.atomic import ensure_dir, remove_tree
from supervisor.state.fs import REAL
from supervisor.state.git import GitError, run_git
from supervisor.state.gitrefs import Refs, config_value, local_gitdir, read_refs
from supervisor.state.layout import mirror_path
from supervisor.state.repos import head_branch

__all__ = ["FETCH_TIMEOUT", "MIRROR_PREP_PREFIX", "MirrorError", "ensure_mirror",
           "ensure_mirror_refs", "mirror_url"]

#: Seconds a `git fetch` (or a `git clone --mirror`) of one repository may take.
FETCH_TIMEOUT = 1800.0
#: A mirror under construction (or being replaced) is `<mirrors_dir>/.prep.<name>.git`.
MIRROR_PREP_PREFIX = ".prep."


class MirrorError(Exception):
    """A mirror could not be made or refreshed; str() carries git's stderr."""


def _git(args: list[str], *, timeout: float, what: str) -> str:
    try:
        return run_git(args, timeout=timeout, what=what)
    except GitError as exc:
        raise MirrorError(str(exc)) from None


def mirror_url(path: Path) -> str | None:
    """The origin URL of the mirror at `path`, or None if it is not a usable git folder."""
    if not path.is_dir() or path.is_symlink():
        return None
    quick = config_value(path, "remote.origin", "url")
    if quick is not None and (path / "HEAD").is_file():
        return quick                     # read from its config file: no git process
    try:
        out = _git([f"--git-dir={path}", "config", "--get", "remote.origin.url"],
                   timeout=60.0, what="git config")
    except MirrorError:
        return None
    return out.strip() or None


def _ls_remote(name: str, repo: RepoConfig, path: Path, timeout: float) -> str:
    """`git ls-remote --symref origin` of the mirror: every ref of the remote, and HEAD."""
    return _git([f"--git-dir={path}", "ls-remote", "--symref", "origin"], timeout=timeout,
                what=f"git ls-remote of repository {name!r} ({repo.url})")


def _advertised(out: str) -> Refs | None:
    """The refs an `ls-remote --symref` printed (peeled tags left out), None if unreadable."""
    refs: dict[str, str] = {}
    head_ref = None
    for line in out.splitlines():
        value, _, ref = line.partition("\t")
        if ref == "HEAD":
            if value.startswith("ref: "):
                head_ref = value[len("ref: "):]
            continue
        if ref.endswith("^{}"):
            continue
        if not ref.startswith("refs/") or len(value) not in (40, 64):
            return None
        refs[ref] = value
    return Refs(refs, head_ref, None)


def _same(remote: Refs | None, mirror: Refs | None, repo: RepoConfig) -> bool:
    """Whether a fetch (and a following of the remote's HEAD) would change nothing."""
    if remote is None or mirror is None or remote.refs != mirror.refs:
        return False
    return bool(repo.branch) or remote.head_ref is None or remote.head_ref == mirror.head_ref


def _follow_head(name: str, repo: RepoConfig, path: Path, timeout: float,
                 out: str | None = None) -> None:
    """Point the mirror's HEAD at the remote's default branch (if it has one); `out`: an
    `ls-remote --symref` of the remote already run."""
    gitdir = f"--git-dir={path}"
    if out is None:
        out = _git([gitdir, "ls-remote", "--symref", "origin", "HEAD"], timeout=timeout,
                   what=f"git ls-remote of repository {name!r} ({repo.url})")
    branch = head_branch(out)
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
    return ensure_mirror_refs(name, repo, mirrors_dir, timeout=timeout)[0]


def ensure_mirror_refs(name: str, repo: RepoConfig, mirrors_dir: str | os.PathLike[str], *,
                       timeout: float = FETCH_TIMEOUT) -> tuple[Path, Refs | None]:
    """ensure_mirror, and the mirror's refs when they were read on the way (it was up to
    date: nothing ran that could change them, and the caller's lock keeps them so), else
    None: the clone from the mirror (scheduler.linkclone) then needs not read them again.
    """
    folder = Path(mirrors_dir)
    path = mirror_path(folder, name)
    staging = folder / f"{MIRROR_PREP_PREFIX}{path.name}"
    remove_tree(staging)                    # a crash mid-clone or mid-replacement
    if (path.exists() or path.is_symlink()) and mirror_url(path) != repo.url:
        os.rename(path, staging)             # not ours (any more): out of the way, atomically
        REAL.fsync_dir(str(folder))
        remove_tree(staging)
    if not path.exists():
        ensure_dir(folder)
        try:
            _git(["-c", "core.fsync=committed", "clone", "--mirror", "--quiet", "--",
                  repo.url, str(staging)], timeout=timeout,
                 what=f"git clone --mirror of repository {name!r} ({repo.url})")
            os.rename(staging, path)
        except BaseException:
            remove_tree(staging)
            raise
        REAL.fsync_dir(str(folder))
        return path, None
    advertised = None
    local = local_gitdir(repo.url)
    if local is not None:
        mine = read_refs(path)
        if _same(read_refs(local), mine, repo):
            return path, mine            # the remote's refs are the mirror's: nothing to fetch
    elif repo.branch is None and not repo.url.startswith(("/", "file:")):
        # a remote elsewhere whose HEAD is asked anyway: ask for every ref at once
        advertised = _ls_remote(name, repo, path, timeout)
        mine = read_refs(path)
        if _same(_advertised(advertised), mine, repo):
            return path, mine
    _git(["-c", "core.fsync=committed", "-c", "gc.autoDetach=false",
          "-c", "maintenance.autoDetach=false", f"--git-dir={path}", "fetch", "--prune",
          "--quiet", "origin"], timeout=timeout,
         what=f"git fetch of repository {name!r} ({repo.url}) into its mirror")
    if repo.branch is None:
        _follow_head(name, repo, path, timeout, advertised)
    return path, None

