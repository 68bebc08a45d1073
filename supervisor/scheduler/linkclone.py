"""A workspace cloned from its mirror by hard links and one `git read-tree` (no `git clone`).

What `git clone --branch B MIRROR DEST` then `git remote set-url origin URL` make, made
directly (docs/LOCKS.md, "The workspace from the mirror"): DEST/.git with the mirror's
object files hard-linked (as git's own local clone does: git never changes an object
file, a repack or gc of the mirror writes new files and unlinks the old ones, so the
workspace keeps its own links to every object it had), HEAD on refs/heads/B, the
remote-tracking refs of every branch, the tags and B itself in packed-refs, a config
whose origin is the real URL with B tracking origin/B (the filesystem probes `git init`
makes: file modes, symlinks, case), then `git read-tree -u --reset HEAD` writes the index
and checks the files out (in parallel, checkout.workers). One git process instead of
five (clone, its shell and upload-pack, set-url, rev-parse); the commit checked out is
known from the mirror's refs.

clone() returns None — nothing made, DEST absent — whenever the mirror is not of the
plain kind read here (state.gitrefs), the branch is not in it, its objects live
elsewhere (alternates), or a hard link cannot be made (another filesystem): the caller
then runs `git clone` as before. A git failure after that raises GitError.

The read-tree runs without `setpriv --pdeathsig` (one exec less): DEST is a staging
folder of this attempt alone (state.layout.workspace_staging), so a read-tree that
outlives a killed scheduler writes only into a folder nobody uses again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from supervisor.state.atomic import remove_tree
from supervisor.state.git import run_git
from supervisor.state.gitrefs import Refs, plain_config, read_refs

__all__ = ["checkout", "clone", "config_text", "link"]

_HEADS = "refs/heads/"
_TAGS = "refs/tags/"
_ORIGIN = "refs/remotes/origin/"
#: Errors of os.link that mean "copy instead" (git clone falls back to copying then).
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


def _quote(value: str, *, always: bool = False) -> str:
    """A config value (or subsection name) as git reads it back: quoted, with its
    backslashes and quotes escaped, when it needs to be (or `always`: a subsection)."""
    if not always and value == value.strip() and not any(c in value for c in '"\\;#'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _probe(git: Path) -> dict[str, str]:
    """git init's probes of the filesystem: does the executable bit stick, can symlinks be
    made, are names case-insensitive."""
    out: dict[str, str] = {}
    probe = git / "config"
    mode = probe.stat().st_mode
    os.chmod(probe, mode ^ 0o100)
    out["filemode"] = "true" if probe.stat().st_mode != mode else "false"
    os.chmod(probe, mode)
    link = git / ".probe-symlink"
    try:
        os.symlink("config", link)
        os.unlink(link)
    except OSError:
        out["symlinks"] = "false"
    if (git / "CoNfIg").exists():
        out["ignorecase"] = "true"
    return out


def config_text(url: str, branch: str, core: dict[str, str]) -> str:
    """The workspace's .git/config: what git clone writes (origin, its fetch refspec,
    `branch` tracking origin's), origin being `url`."""
    lines = ["[core]", "\trepositoryformatversion = 0"]
    lines += [f"\t{k} = {v}" for k, v in {"filemode": "true", **core}.items()]
    lines += ["\tbare = false", "\tlogallrefupdates = true",
              "[remote \"origin\"]", f"\turl = {_quote(url)}",
              "\tfetch = +refs/heads/*:refs/remotes/origin/*",
              f"[branch {_quote(branch, always=True)}]", "\tremote = origin",
              f"\tmerge = {_quote(_HEADS + branch)}"]
    return "\n".join(lines) + "\n"


def _link_objects(src: str, dst: str) -> bool:
    """Hard-link every file of the mirror's objects/ into dst (made if missing); False if
    one cannot be. A symlink is linked as itself, one to a folder left out (os.walk's
    view, as before)."""
    try:
        os.mkdir(dst)
    except FileExistsError:
        pass
    with os.scandir(src) as entries:
        for entry in entries:
            there = os.path.join(dst, entry.name)
            if entry.is_dir(follow_symlinks=False):
                if not _link_objects(entry.path, there):
                    return False
            elif not (entry.is_symlink() and entry.is_dir()):
                try:
                    os.link(entry.path, there)
                except OSError as exc:
                    if exc.errno in _NO_LINK:
                        return False
                    raise
    return True


def clone(mirror: Path, branch: str | None, url: str, dest: Path, *,
          checkout_workers: int, timeout: float, what: str,
          refs: Refs | None = None) -> str | None:
    """Make DEST a clone of `mirror` at `branch` (None: the mirror's HEAD), origin `url`;
    the commit checked out, or None (nothing made) when `git clone` must do it. `refs`:
    the mirror's refs as read_refs gave them just before (under the repository's lock),
    else they are read here. GitError (naming `what`) when git read-tree fails; DEST is
    then removed. link() then checkout()."""
    tip = link(mirror, branch, url, dest, refs=refs)
    if tip is not None:
        checkout(dest, checkout_workers=checkout_workers, timeout=timeout, what=what)
    return tip


def link(mirror: Path, branch: str | None, url: str, dest: Path, *,
         refs: Refs | None = None) -> str | None:
    """The part of clone() that reads the mirror: DEST/.git with the mirror's objects
    hard-linked and the refs, config and HEAD written (no files checked out yet); the
    commit HEAD names, or None (nothing made) when `git clone` must do it. What follows,
    checkout(), reads only DEST: the mirror may be fetched into meanwhile."""
    if (mirror / "objects" / "info" / "alternates").exists():
        return None
    if refs is None:                    # (read_refs reads only a plain config's mirror)
        refs = read_refs(mirror) if plain_config(mirror) is not None else None
    if refs is None:
        return None
    if branch is None:
        if refs.head_ref is None or not refs.head_ref.startswith(_HEADS):
            return None
        branch = refs.head_ref[len(_HEADS):]
    tip = refs.refs.get(_HEADS + branch)
    if tip is None or any(c < " " for c in url + branch):
        return None
    git = dest / ".git"
    try:
        for sub in ("refs/heads", "refs/tags", "refs/remotes/origin"):
            (git / sub).mkdir(parents=True)
        if not _link_objects(str(mirror / "objects"), str(git / "objects")):
            remove_tree(dest)
            return None
        (git / "config").write_text(config_text(url, branch, {}))
        (git / "config").write_text(config_text(url, branch, _probe(git)))
        packed = {_HEADS + branch: tip}
        for name, oid in refs.refs.items():
            if name.startswith(_HEADS):
                packed[_ORIGIN + name[len(_HEADS):]] = oid
            elif name.startswith(_TAGS):
                packed[name] = oid
        (git / "packed-refs").write_text("".join(f"{packed[name]} {name}\n"
                                                 for name in sorted(packed)))
        if refs.head_ref is not None and refs.head_ref in refs.refs \
                and refs.head_ref.startswith(_HEADS):
            (git / "refs/remotes/origin/HEAD").write_text(
                f"ref: {_ORIGIN}{refs.head_ref[len(_HEADS):]}\n")
        (git / "HEAD").write_text(f"ref: {_HEADS}{branch}\n")
    except BaseException:
        remove_tree(dest)
        raise
    return tip


def checkout(dest: Path, *, checkout_workers: int, timeout: float, what: str) -> None:
    """`git read-tree -u --reset HEAD` in DEST made by link(): the index and the files
    (parallel checkout). GitError (naming `what`) when it fails; DEST is then removed."""
    git = dest / ".git"
    try:
        run_git(["-c", f"checkout.workers={checkout_workers}", "read-tree", "-u", "--reset",
                 "HEAD"], timeout=timeout, what=what, cwd=str(dest),
                env={"GIT_DIR": str(git), "GIT_WORK_TREE": str(dest)}, pdeathsig=False)
    except BaseException:
        remove_tree(dest)
        raise
