"""What a job changed: its repositories examined when the agent exits, the patch, the push.

Run by the adaptor (law 5: in the job, never in batchd) after the agent and its process
group are gone, before result.json. docs/JOBFILES.md has the whole of it: the temporary
index that leaves the workspace as it was, what changes.json and changes.patch hold, the
cut at PATCH_MAX_BYTES, the deterministic commit that makes a retried push idempotent, and
what a crash at each step leaves.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from adaptors._spec import JobSpec, RepoSpec
from supervisor.state.atomic import remove_tree, write_bytes
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.fs import FS, REAL
from supervisor.state.git import (
    Account,
    GitError,
    GitKilled,
    run_git,
    run_git_bytes,
    run_git_capped,
)
from supervisor.state.jobs import CHANGES_KEYS
from supervisor.state.layout import CHANGES, JOB_SPEC, JobPaths, read_record, write_record

__all__ = [
    "COLLECT_TIMEOUT",
    "LOG_MAX",
    "PATCH_MAX_BYTES",
    "PUSH_TIMEOUT",
    "Collected",
    "RepoChanges",
    "collect",
    "commit_message",
    "cut_patch",
    "fill_counts",
    "parse_diff",
    "patch_counts",
    "prefix_moves",
    "write_changes",
]

#: A patch longer than this (50 MiB) is cut at the last whole file before it, and marked.
PATCH_MAX_BYTES = 50 * 1024 * 1024
#: Seconds each git command examining a repository may take.
COLLECT_TIMEOUT = 1800.0
#: Seconds a push may take (git itself gives up on a stalled transfer: state.git.git_env).
PUSH_TIMEOUT = 1800.0
#: changes.json lists at most this many of a repository's new commits (all are counted).
LOG_MAX = 1000
#: How often one repository's collection (or push) is tried when a signal kills its git
#: (the OOM killer, a stray kill): the work is read-only or idempotent, so it is run again.
KILLED_TRIES = 5

#: Options of every git the collection runs in a workspace: hooks and fsmonitor never run
#: (a workspace's config is the agent's), and nothing is fsynced (the temporary index and
#: the objects it adds are scratch; the files that matter are written by state.atomic).
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.fsync=none"]
#: The diff options of the patch and of the file list: renames found as `git diff` finds
#: them by default, no external diff driver, no textconv (the patch must apply), no colour.
_DIFF = ["--no-ext-diff", "--no-textconv", "--no-color", "-M"]
_STATUS = {"A": "added", "D": "deleted", "M": "modified", "R": "renamed", "C": "copied",
           "T": "type_changed", "U": "unmerged", "X": "unknown"}
_EMPTY_MODE = "000000"


@dataclass
class RepoChanges:
    """One repository's changes since its base (the summary goes into the job record)."""

    name: str
    base: str | None
    head: str | None = None
    tree: str | None = None
    commits: int | None = None
    log: list[dict[str, str]] = field(default_factory=list)
    paths: list[dict[str, Any]] = field(default_factory=list)
    branch: str | None = None
    pushed: str | None = None
    error: str | None = None

    @property
    def files(self) -> int | None:
        return None if self.error is not None else len(self.paths)

    def _sum(self, key: str) -> int | None:
        if self.error is not None:
            return None
        return sum(int(p[key] or 0) for p in self.paths)

    def summary(self) -> dict[str, Any]:
        """The record's entry (CHANGES_KEYS): after a push, `head` is the pushed commit."""
        out = {"base": self.base, "head": self.pushed or self.head, "files": self.files,
               "insertions": self._sum("insertions"), "deletions": self._sum("deletions"),
               "branch": self.branch, "commits": self.commits}
        return {k: out[k] for k in CHANGES_KEYS}

    def detail(self) -> dict[str, Any]:
        """changes.json's entry: the summary, the tree, the commits, every path, the error."""
        return {**self.summary(), "workspace_head": self.head, "tree": self.tree,
                "log": self.log, "paths": self.paths, "error": self.error}


@dataclass
class Collected:
    """Every repository's changes and the one patch (its kept head, its whole size)."""

    repos: list[RepoChanges]
    patch: bytes = b""
    patch_bytes: int = 0
    cut: bool = False
    error: str | None = None      # the first failure (the job's reason if it has none)

    def summary(self) -> dict[str, dict[str, Any]]:
        """The job record's `changes`: per repository name, its summary."""
        return {r.name: r.summary() for r in self.repos}

    def record(self, job_id: str, now: float | None = None) -> dict[str, Any]:
        """The body of changes.json (CHANGES)."""
        return {"id": job_id, "repos": {r.name: r.detail() for r in self.repos},
                "patch": {"bytes": len(self.patch), "total_bytes": self.patch_bytes,
                          "cut": self.cut, "max_bytes": PATCH_MAX_BYTES},
                "collected_at": iso_now(now), "error": self.error}


# -- one repository --------------------------------------------------------------------------

class _Git:
    """git in one clone of the workspace with a temporary index: GIT_DIR and GIT_WORK_TREE
    given (git never looks above the clone, nor refuses one the agent's account owns), run
    as `account` when the agent ran as another user."""

    def __init__(self, repo: RepoSpec, index: Path, account: Account | None,
                 home: str | None) -> None:
        self.repo = repo
        self.gitdir = _gitdir(Path(repo.path))
        self.index = index
        self.env = {"GIT_DIR": str(self.gitdir), "GIT_WORK_TREE": repo.path,
                    "GIT_INDEX_FILE": str(index), "GIT_LITERAL_PATHSPECS": "1"}
        if home is not None:
            self.env["HOME"] = home
        self.account = account

    def what(self, doing: str) -> str:
        return f"{doing} of repository {self.repo.name!r}"

    def text(self, args: list[str], doing: str) -> str:
        return run_git([*_SAFE, *args], timeout=COLLECT_TIMEOUT, what=self.what(doing),
                       cwd=self.repo.path, env=self.env, account=self.account)

    def raw(self, args: list[str], doing: str, stdin: bytes | None = None) -> bytes:
        return run_git_bytes([*_SAFE, *args], timeout=COLLECT_TIMEOUT, what=self.what(doing),
                             cwd=self.repo.path, env=self.env, account=self.account,
                             stdin=stdin)

    def capped(self, args: list[str], limit: int, doing: str,
               head_until: bytes) -> tuple[bytes, bytes, int]:
        return run_git_capped([*_SAFE, *args], limit=limit, timeout=COLLECT_TIMEOUT,
                              what=self.what(doing), cwd=self.repo.path, env=self.env,
                              account=self.account, head_until=head_until)


def _gitdir(path: Path) -> Path:
    """The clone's git folder: `.git`, or where a `.git` file (`gitdir: X`) points."""
    dot = path / ".git"
    if dot.is_file():
        try:
            line = dot.read_text(errors="replace").strip()
        except OSError:
            return dot
        if line.startswith("gitdir:"):
            target = Path(line[len("gitdir:"):].strip())
            return target if target.is_absolute() else path / target
    return dot


def _seed_index(gitdir: Path, index: Path, account: Account | None) -> None:
    """Start the temporary index as a copy of the clone's own (its stat data spares git
    hashing every unchanged file), modification time kept so git's racy-file checks see
    what they would in the real one. No index (or an unreadable one): start empty. A full
    disk raises OSError, leaving no partial copy (git would refuse it: "index file smaller
    than expected", chaos seed 494710626)."""
    try:
        shutil.copy2(gitdir / "index", index)
    except OSError as exc:
        index.unlink(missing_ok=True)       # a copy cut short (a full disk) is no index
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise                           # waited out by the caller, as git's own writes
        return
    if account is not None:
        os.chown(index, account.uid, account.gid)


def parse_diff(out: bytes) -> list[dict[str, Any]]:
    """The paths of `git diff --raw -z` output (with --numstat: their line counts too), in
    git's order: each {path, old_path (renames and copies), status, similarity, old_mode,
    new_mode (null where the file does not exist on that side)} and, when counted, binary,
    insertions, deletions. ValueError when the two lists do not pair up."""
    tokens = out.split(b"\0")
    raw: list[dict[str, Any]] = []
    counts: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok:
            i += 1
            continue
        if tok.startswith(b":"):
            old_mode, new_mode, _old, _new, status = tok[1:].decode().split(" ")
            kind = status[:1]
            paths = [tokens[i + 1]] + ([tokens[i + 2]] if kind in "RC" else [])
            i += 1 + len(paths)
            names = [p.decode(errors="replace") for p in paths]
            raw.append({"path": names[-1], "old_path": names[0] if len(names) > 1 else None,
                        "status": _STATUS.get(kind, "unknown"),
                        "similarity": int(status[1:]) if status[1:].isdigit() else None,
                        "old_mode": None if old_mode == _EMPTY_MODE else old_mode,
                        "new_mode": None if new_mode == _EMPTY_MODE else new_mode})
            continue
        added, deleted, rest = tok.decode(errors="replace").split("\t", 2)
        i += 3 if rest == "" else 1
        counts.append((added, deleted))
    if counts:
        fill_counts(raw, [(a == "-", 0 if a == "-" else int(a), 0 if d == "-" else int(d))
                          for a, d in counts])
    return raw


def fill_counts(paths: list[dict[str, Any]], counts: list[tuple[bool, int, int]]) -> None:
    """Set binary, insertions, deletions of each path from `counts`, in the same order
    (a binary file counts no lines). ValueError when the lengths differ."""
    if len(counts) != len(paths):
        raise ValueError(f"git diff gave {len(paths)} paths but {len(counts)} line counts")
    for entry, (binary, added, deleted) in zip(paths, counts, strict=True):
        entry.update(binary=binary, insertions=0 if binary else added,
                     deletions=0 if binary else deleted)


_BINARY = re.compile(rb"^(?:GIT binary patch|Binary files .* differ)$", re.MULTILINE)


def patch_counts(patch: bytes) -> list[tuple[bool, int, int]]:
    """(binary, insertions, deletions) of each file diff of a whole patch, in its order: the
    counts `git diff --numstat` gives, read off the patch instead of making git diff every
    file twice. Past the first hunk header ('@@') a line starting '+' or '-' is an added
    or deleted line (the '---'/'+++' headers come before it); a file diff with a binary
    patch counts none."""
    if not patch:
        return []
    out = []
    for section in (b"\n" + patch).split(_DIFF_START)[1:]:
        hunks = section.find(b"\n@@ ")
        if hunks < 0:
            out.append((_BINARY.search(section) is not None, 0, 0))
            continue
        body = section[hunks:]
        out.append((False, body.count(b"\n+"), body.count(b"\n-")))
    return out


def _examine(repo: RepoSpec, git: _Git, prefix: str | None, room: int, *,
             tree: bool) -> tuple[RepoChanges, bytes, int]:
    """One repository: its untracked files (`.gitignore` respected) entered in the
    temporary index (hashed, no object written: --info-only), the commits since base, then
    ONE `git diff` of base against the worktree: the file list and the patch, at most
    `room` bytes of it kept. With `tree` (a push follows) the worktree is instead added to
    the temporary index with its blobs (`git add --all`; an --info-only entry would look
    clean to it and its blob never be written) and written as the tree a commit records.
    GitError when git fails."""
    got = RepoChanges(repo.name, repo.base)
    if tree:        # every blob written: the tree a commit records must be whole
        git.text(["add", "--all"], "git add --all (a temporary index)")
        got.tree = git.text(["write-tree"], "git write-tree").strip()
    else:           # hashed only (an --info-only entry's blob is never written)
        untracked = git.raw(["ls-files", "--others", "--exclude-standard", "-z"],
                            "git ls-files --others (the untracked files)")
        if untracked:
            git.raw(["update-index", "--add", "--info-only", "-z", "--stdin"],
                    "git update-index --add --info-only (a temporary index)", stdin=untracked)
    got.head = _head(git)
    base = repo.base or git.text(["hash-object", "-t", "tree", "--stdin"],
                                 "git hash-object (the empty tree)").strip()
    if repo.base is not None and got.head is not None:
        log = git.raw(["log", "--format=%H%x00%s%x00", f"{repo.base}..{got.head}"],
                      "git log (the job's commits)").split(b"\0")
        pairs = [(log[k].strip(), log[k + 1]) for k in range(0, len(log) - 1, 2)]
        got.commits = len(pairs)
        got.log = [{"id": sha.decode(), "subject": subject.decode(errors="replace")}
                   for sha, subject in pairs[:LOG_MAX]]
    elif got.head is not None:
        got.commits = int(git.text(["rev-list", "--count", got.head], "git rev-list"))
    prefixes = ["--src-prefix=a/", "--dst-prefix=b/"] if prefix is None else [
        f"--src-prefix=a/{prefix}/", f"--dst-prefix=b/{prefix}/"]
    listing, patch, total = git.capped(
        ["diff", "--raw", "-z", "--no-abbrev", "--binary", *_DIFF, *prefixes, base], room,
        "git diff --binary", head_until=_LIST_END)
    got.paths = parse_diff(listing)
    counts = patch_counts(patch) if len(patch) == total else []
    if len(counts) != len(got.paths):        # a cut patch: git counts the lines itself
        counted = parse_diff(git.raw(["diff", "--raw", "--numstat", "-z", "--no-abbrev",
                                      *_DIFF, base], "git diff --numstat"))
        counts = [(p["binary"], p["insertions"], p["deletions"]) for p in counted]
    fill_counts(got.paths, counts)
    if prefix is not None:
        patch, total = prefix_moves(patch, total, prefix, got.paths)
    return got, patch, total


_MOVE_LINE = re.compile(rb'^((?:rename|copy) (?:from|to) "?)', re.MULTILINE)


def prefix_moves(patch: bytes, total: int, prefix: str,
                 paths: list[dict[str, Any]]) -> tuple[bytes, int]:
    """The `rename from/to` and `copy from/to` lines of a patch with their paths under
    `prefix/` (git's --src-prefix/--dst-prefix leave those header lines bare, so a patch of
    several repositories would not apply from the workspace). Only header lines can start
    so: a text line starts with ' ', '+', '-' or '\\', a binary line has no space. `total`
    grows by what the renames and copies of `paths` add, those past the kept head too."""
    moves = sum(1 for p in paths if p["status"] in ("renamed", "copied"))
    grown = _MOVE_LINE.sub(lambda m: m.group(1) + prefix.encode() + b"/", patch)
    return grown, total + moves * 2 * (len(prefix) + 1)


def _head(git: _Git) -> str | None:
    """The commit HEAD names, None when it names none (an empty repository's unborn
    branch: git then fails without a word). GitError for any other failure."""
    try:
        return git.text(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
                        "git rev-parse HEAD").strip() or None
    except GitError as exc:
        if str(exc).endswith("failed: exit status 1"):
            return None
        raise


_DIFF_START = b"\ndiff --git "
#: Where the file list of `git diff --raw --numstat -z --patch` ends and its patch begins:
#: an empty record (no record of the list is empty: every path has a name).
_LIST_END = b"\0\0"


def cut_patch(head: bytes, room: int) -> bytes:
    """The longest run of whole file diffs of `head` that fits in `room` bytes (every file
    diff starts with "diff --git ", which no other line of a patch does)."""
    if len(head) <= room:
        return head
    end = head.rfind(_DIFF_START, 0, room + len(_DIFF_START) - 1)   # a start at <= room - 1
    return head[:end + 1] if end >= 0 else b""


# -- the push ----------------------------------------------------------------------------------

def commit_message(spec: JobSpec) -> str:
    """The commit --push makes: the prompt's first line cut to 72 characters ("batchd job
    <id>" when that line is blank), a blank line, and the `Batchd-Job: <id>` trailer."""
    lines = spec.prompt.splitlines()
    subject = lines[0].strip()[:72].rstrip() if lines else ""
    return f"{subject or f'batchd job {spec.id}'}\n\nBatchd-Job: {spec.id}\n"


#: How far back _Pusher._retried follows retry_of (a job retries at most 10 times).
_RETRY_CHAIN_MAX = 64

_TRAILER = re.compile(r"^Batchd-Job: (\S+)\s*$", re.MULTILINE)


class _Pusher:
    """Pushes from a scratch bare repository of batchd's own whose objects are borrowed from
    the clone (objects/info/alternates): the workspace's config, hooks and credential
    helpers (the agent's to write) play no part, and the workspace is left as it was."""

    def __init__(self, spec: JobSpec, scratch: Path) -> None:
        self.spec = spec
        self.scratch = scratch

    def _git(self, repo: RepoChanges, gitdir: Path, args: list[str], doing: str, *,
             env: Mapping[str, str] | None = None, timeout: float = COLLECT_TIMEOUT,
             what: str | None = None) -> str:
        bare = self.scratch / f"{repo.name}.git"
        if not bare.exists():
            run_git(["init", "--bare", "--quiet", str(bare)], timeout=COLLECT_TIMEOUT,
                    what="git init of the push's scratch repository")
            (bare / "objects" / "info").mkdir(parents=True, exist_ok=True)
            (bare / "objects" / "info" / "alternates").write_text(
                str((gitdir / "objects").absolute()) + "\n")
        return run_git([*_SAFE, "-c", "advice.pushUpdateRejected=false",
                        f"--git-dir={bare}", *args], timeout=timeout,
                       what=what or f"{doing} of repository {repo.name!r}", env=env)

    def _date(self) -> str:
        when = parse_iso(self.spec.created_at)
        return f"@{int(when if when is not None else 0)} +0000"

    def _retried(self) -> set[str]:
        """The jobs this one retries, nearest first (retry_of, then theirs, read from their
        spec.json while it is kept): a push one of them made may be replaced."""
        chain: set[str] = set()
        job = self.spec.retry_of
        jobs_dir = Path(self.spec.job_dir).parent
        while job is not None and job not in chain and len(chain) < _RETRY_CHAIN_MAX:
            chain.add(job)
            spec = read_record(JOB_SPEC, jobs_dir / job / "spec.json", owner=False)
            nxt = spec.get("retry_of") if isinstance(spec, dict) else None
            job = nxt if isinstance(nxt, str) else None
        return chain

    def _remote(self, repo: RepoChanges, gitdir: Path, url: str,
                branch: str) -> tuple[str | None, str | None]:
        """(parent, lease) of the commit to push. BRANCH's tip at the remote is looked at
        only when this job resumes a session or retries a job: a tip the resumed job made
        (its trailer says so) on top of this workspace's HEAD is the parent (the session's
        commits follow each other); a tip an earlier attempt of this job made is replaced
        (pushed with --force-with-lease on that very tip). Else the parent is HEAD, no
        lease: a branch someone else moved is git's to refuse."""
        retried = self._retried()
        if self.spec.resume_of is None and not retried:
            return repo.head, None
        out = self._git(repo, gitdir, ["ls-remote", "--", url, f"refs/heads/{branch}"],
                        "git ls-remote", timeout=PUSH_TIMEOUT)
        tip = out.split("\t", 1)[0].strip()
        if not tip:
            return repo.head, None
        self._git(repo, gitdir, ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                                 "--", url, f"refs/heads/{branch}"], "git fetch of the branch",
                  timeout=PUSH_TIMEOUT)
        message = self._git(repo, gitdir, ["log", "-1", "--format=%B", tip], "git log")
        trailers = set(_TRAILER.findall(message))
        if trailers & retried:
            return repo.head, tip
        if self.spec.resume_of is None or repo.head is None or not (
                trailers & {self.spec.id, self.spec.resume_of}):
            return repo.head, None
        try:
            self._git(repo, gitdir, ["merge-base", "--is-ancestor", repo.head, tip],
                      "git merge-base")
        except GitError:
            return repo.head, None
        return tip, None

    def push(self, repo: RepoChanges, gitdir: Path, url: str, branch: str) -> None:
        """Commit the repository's tree (unless the parent holds it already: the agent
        committed everything) and push that commit to BRANCH; GitError naming git's words
        when it fails. The commit is deterministic (tree, parent, message, the configured
        author, the job's submission time as both dates), so pushing the same job again
        pushes the same commit: nothing changes, and git says nothing is wrong."""
        assert repo.tree is not None
        parent, lease = self._remote(repo, gitdir, url, branch)
        parent_tree = None if parent is None else self._git(
            repo, gitdir, ["rev-parse", f"{parent}^{{tree}}"], "git rev-parse").strip()
        if parent is not None and parent_tree == repo.tree:
            commit = parent
        else:
            name, email = self.spec.author
            date = self._date()
            env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date,
                   "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
                   "GIT_COMMITTER_DATE": date}
            args = ["commit-tree", "--no-gpg-sign", repo.tree,
                    *(["-p", parent] if parent else []),
                    "-m", commit_message(self.spec).rstrip("\n")]
            commit = self._git(repo, gitdir, args, "git commit-tree", env=env).strip()
        force = [] if lease is None or lease == commit else [
            f"--force-with-lease=refs/heads/{branch}:{lease}"]
        self._git(repo, gitdir, ["push", "--quiet", *force, "--", url,
                                 f"{commit}:refs/heads/{branch}"], "git push",
                  timeout=PUSH_TIMEOUT,
                  what=f"push of repository {repo.name!r} to branch {branch!r} of {url}")
        repo.pushed, repo.branch = commit, branch


# -- the job -----------------------------------------------------------------------------------

def collect(spec: JobSpec, files: JobPaths, *, push: bool, account: Account | None = None,
            home: str | None = None, max_bytes: int = PATCH_MAX_BYTES) -> Collected:
    """Examine every repository of the job (git as `account`, with `home`, when the agent
    ran as another user); with `push` (a completed job of `submit --push`), commit and push
    the changes of each repository that has some. Never raises for git: a failure is kept
    on its repository and as Collected.error. The scratch files live in
    `jobs/<id>/.changes/` and are removed before returning."""
    scratch = files.dir / ".changes"
    remove_tree(scratch)            # left by an adaptor killed while collecting
    scratch.mkdir()
    if account is not None:
        os.chown(scratch, account.uid, account.gid)
    several = len(spec.repos) > 1
    got = Collected([])
    kept: list[bytes] = []
    room = max_bytes
    try:
        for n, repo in enumerate(spec.repos):
            git = _Git(repo, scratch / f"index.{n}", account, home)

            def examine(git: _Git = git, repo: RepoSpec = repo,
                        room: int = room) -> tuple[RepoChanges, bytes, int]:
                _seed_index(git.gitdir, git.index, account)
                return _examine(repo, git, repo.name if several else None,
                                room + len(_DIFF_START), tree=push and spec.push is not None)
            try:
                changes, patch, total = _unless_killed(examine)
            except (GitError, ValueError, OSError) as exc:
                why = f"changes of repository {repo.name!r} not collected: {exc}"
                got.repos.append(RepoChanges(repo.name, repo.base, error=why))
                got.error = got.error or why
                continue
            got.repos.append(changes)
            got.patch_bytes += total
            whole = cut_patch(patch, room) if total > room else patch
            got.cut = got.cut or len(whole) < total
            kept.append(whole)
            room -= len(whole)
            if got.cut:
                room = 0
        if push and spec.push is not None and got.error is None:
            _push_all(spec, got, scratch)
    finally:
        remove_tree(scratch)
    got.patch = b"".join(kept)
    if got.cut:
        got.patch += (f"# batchd: patch cut at {len(got.patch)} of {got.patch_bytes} bytes "
                      f"(kept up to {max_bytes}); changes.json lists every file\n").encode()
    return got


def _push_all(spec: JobSpec, got: Collected, scratch: Path) -> None:
    """Push each repository that has changes, in order; the first failure stops it."""
    assert spec.push is not None
    pusher = _Pusher(spec, scratch)
    by_name = {r.name: r for r in spec.repos}
    for changes in got.repos:
        if not changes.paths:
            continue
        repo = by_name[changes.name]
        if repo.url is None:
            got.error = (f"push of repository {repo.name!r}: its URL is not known "
                         "(the repository is no longer configured)")
            return
        try:
            _unless_killed(functools.partial(pusher.push, changes, _gitdir(Path(repo.path)),
                                             repo.url, spec.push))
        except GitError as exc:
            got.error = str(exc)
            return


_R = TypeVar("_R")


def _unless_killed(attempt: Callable[[], _R]) -> _R:
    """`attempt()`, run again (up to KILLED_TRIES times in all) while a signal kills its
    git; the last GitKilled, or any other error, is raised."""
    for _ in range(KILLED_TRIES - 1):
        try:
            return attempt()
        except GitKilled:
            continue
    return attempt()


def write_changes(files: JobPaths, got: Collected, *, fs: FS = REAL) -> None:
    """changes.patch, then changes.json, each atomically and durably (temp, fsync, rename,
    fsync folder): a crash leaves neither, the patch alone (no changes.json: not collected),
    or both; result.json, the job's end, comes after both. OSError if the disk refuses."""
    write_bytes(files.patch, got.patch, fs=fs)
    write_record(CHANGES, files.changes, got.record(files.id), fs=fs)
