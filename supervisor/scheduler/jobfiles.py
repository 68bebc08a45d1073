"""The scheduler's side of the job files: observe a job, write its spec and workspace, kill it.

observe() reads a job's sentinel, result and lock as a reader; write_spec() and
prepare_workspace() write the spec and the workspace before a launch; workspace_repos()
records each repository's `base` (the commit its clone is at) for the spec, so it is
durable before the agent starts. Their crash behaviour and the lock probe are in
docs/JOBS.md and docs/JOBFILES.md.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import Config, RepoConfig
from supervisor.scheduler import linkclone
from supervisor.scheduler.lifecycle import Observation, SlurmSeen
from supervisor.scheduler.mirrors import (
    FETCH_TIMEOUT,
    MirrorError,
    ensure_mirror_refs,
    mirror_url,
)
from supervisor.state.atomic import Corrupt, Missing, ensure_dir, remove_tree
from supervisor.state.clock import parse_iso
from supervisor.state.flock import LockProbe, probe_lock
from supervisor.state.fs import REAL
from supervisor.state.git import GitError, run_git
from supervisor.state.gitrefs import Refs, plain_config, read_refs
from supervisor.state.jobs import job_idle_timeout, job_timeout, push_branch
from supervisor.state.layout import (
    JOB_SPEC,
    RESULT,
    SENTINEL,
    WORKSPACE_PREP,
    Layout,
    RecordKind,
    mirror_path,
    read_record,
    staging_owner,
    workspace_staging,
    write_record,
)
from supervisor.state.proc import alive, start_time

__all__ = [
    "CHECKOUT_WORKERS",
    "CLONE_TIMEOUT",
    "PREP_PREFIX",
    "Basis",
    "Made",
    "PrepareError",
    "build_spec",
    "kill_group",
    "make_ahead",
    "make_job_dir",
    "observe",
    "prepare_workspace",
    "workspace_path",
    "workspace_repos",
    "write_spec",
]

#: A workspace under construction is `<workspace_dir>/<PREP_PREFIX><id>+<token>`
#: (state.layout.workspace_staging).
PREP_PREFIX = WORKSPACE_PREP
#: Seconds one `git clone` may take before it is killed and the job fails.
CLONE_TIMEOUT = 1800.0
#: Processes git checks a workspace out with (git's parallel checkout): the files of a
#: big repository are written several at once, which is most of a clone from the mirror.
CHECKOUT_WORKERS = max(2, min(8, os.cpu_count() or 2))

_STDERR_TAIL = 2000
#: Folders this process made sure of (state.atomic.ensure_dir: made, their parent
#: fsynced): the workspaces' and the job folders' parents, once per process, not per job.
_ENSURED: set[str] = set()
#: Job folders make_job_dir made for a write_spec to come (taken out by that write_spec).
_JOB_DIRS: set[str] = set()


class PrepareError(Exception):
    """The job cannot be prepared; str() is the reason recorded on the failed job."""


@dataclass(frozen=True)
class Basis:
    """What one repository of a workspace made ahead was made from: the repository's URL
    and branch then, and its mirror's refs (read under the mirror's in-process lock)."""

    url: str
    branch: str | None
    refs: Refs


@dataclass(frozen=True)
class Made:
    """A workspace made ahead (make_ahead): the staging folder it waits in, the workspace
    it is for, what each repository was made from and the commit each checked out."""

    staging: Path
    ws: Path
    bases: dict[str, Basis]
    tips: dict[str, str]


# --------------------------------------------------------------------------- observe


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _record(kind: RecordKind, path: Path, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the record, None), (None, None) if missing, (None, why) if unusable."""
    got = read_record(kind, path, owner=False)
    if isinstance(got, Missing):
        return None, None
    if isinstance(got, Corrupt):
        return None, got.reason
    if got.get("id") != job_id:
        return None, f"record is for job {got.get('id')!r}, not {job_id!r}"
    return got, None


def observe(layout: Layout, entry: Mapping[str, Any], now: float, cfg: Config,
            slurm: SlurmSeen | None = None) -> Observation:
    """Look at one job's sentinel, adaptor process, lock and result (reads only); `slurm`
    is what Slurm said of it (a Slurm job), passed on as is.

    `now` is accepted for symmetry with the lifecycle calls; nothing here compares times.
    """
    job_id = str(entry["id"])
    sentinel, _ = _record(SENTINEL, layout.job_sentinel(job_id), job_id)
    candidates: list[tuple[int, int | None]] = []
    for source in (entry, sentinel or {}):
        known = _int(source.get("pid"))
        if known is not None and known > 0:
            candidates.append((known, _int(source.get("start"))))
    living = [(p, s) for p, s in candidates if s is not None and alive(p, s)]
    # The lock only matters when no known pid is alive (the table reads lock_held OR'ed
    # with alive): skip the probe, which reads all of /proc/locks, for a live adaptor, and
    # for a Slurm job (its adaptor's lock is held on a node: /proc/locks here cannot say).
    skip = living or slurm is not None
    lock = LockProbe(held=False, pid=None) if skip else probe_lock(layout.job_lock(job_id))
    result, result_error = _record(RESULT, layout.job_result(job_id), job_id)
    pid: int | None
    start: int | None
    if living:
        pid, start = living[0]
    elif candidates:
        pid, start = candidates[0]
    elif lock.pid is not None:
        pid, start = lock.pid, start_time(lock.pid)
    else:
        pid, start = None, None
    return Observation(
        sentinel=sentinel, result=result, result_error=result_error,
        heartbeat=parse_iso(sentinel.get("heartbeat_at")) if sentinel is not None else None,
        pid=pid, start=start, alive=bool(living), lock_held=lock.held,
        timeout=job_timeout(cfg, entry), slurm=slurm)


# --------------------------------------------------------------------------- spec


def _ensure_once(folder: Path) -> None:
    """ensure_dir(folder) the first time this process needs it (again if it vanished)."""
    key = os.path.abspath(folder)
    if key not in _ENSURED or not os.path.isdir(key):
        ensure_dir(key)
        _ENSURED.add(key)


def _ensure_in(folder: Path) -> None:
    """ensure_dir(folder), its parent made sure of once per process: folder made if
    missing, and its entry made durable (its parent fsynced) either way."""
    _ensure_once(folder.parent)
    try:
        os.mkdir(folder, 0o755)
    except FileExistsError:
        pass
    REAL.fsync_dir(str(folder.parent))


def workspace_path(cfg: Config, entry: Mapping[str, Any]) -> Path:
    """The job's workspace: entry["workspace"] if set (the submit handler sets it), else
    <workspace_dir>/<id>."""
    given = entry.get("workspace")
    return Path(given) if isinstance(given, str) and given else cfg.workspace_dir / str(entry["id"])


def build_spec(layout: Layout, cfg: Config, entry: Mapping[str, Any],
               repos: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JOB_SPEC body for a queue entry (docs/JOBFILES.md); PrepareError for an unknown
    agent. `repos`: the job's repositories as workspace_repos() found them (name, path,
    url, base), whose changes the adaptor collects when the agent exits."""
    job_id = str(entry["id"])
    name = str(entry.get("agent"))
    agent = cfg.agents.get(name)
    if agent is None:
        raise PrepareError(f"unknown agent {name!r} (not in the configuration "
                           f"{cfg.source}; known: {', '.join(sorted(cfg.agents))})")
    resume = entry.get("resume_session")
    resume_of = entry.get("resume_of")
    return {
        "id": job_id,
        "agent": name,
        "adaptor": agent.adaptor,
        "command": agent.command,
        "args": list(agent.args),
        "env": dict(agent.env),
        "prompt": str(entry.get("prompt") or ""),
        "model": agent.model,
        "workspace": str(workspace_path(cfg, entry)),
        "job_dir": str(layout.job_dir(job_id)),
        "state_dir": str(layout.root),
        "timeout": job_timeout(cfg, entry),
        "heartbeat_interval": cfg.scheduler.heartbeat_interval,
        "kill_grace": cfg.scheduler.kill_grace,
        "user": agent.user,
        "resume_session": resume if isinstance(resume, str) else None,
        "resume_of": resume_of if isinstance(resume_of, str) else None,
        "idle_timeout": job_idle_timeout(cfg, entry),
        "output_max_bytes": cfg.jobs.output_max_bytes,
        "created_at": entry.get("created_at") if isinstance(entry.get("created_at"), str)
        else None,
        "repos": list(repos or []),
        "push": push_branch(entry),
        "retry_of": entry.get("retry_of") if isinstance(entry.get("retry_of"), str) else None,
        "git": {"author_name": cfg.git.author_name, "author_email": cfg.git.author_email},
    }


def make_job_dir(layout: Layout, job_id: str) -> None:
    """Make jobs/<id>/ (its entry durable) ahead of write_spec, which then does not (the
    scheduler does it while the job's workspace is cloned, off the launch's path)."""
    folder = layout.job_dir(job_id)
    _ensure_in(folder)
    _JOB_DIRS.add(str(folder))


def write_spec(layout: Layout, cfg: Config, entry: Mapping[str, Any],
               repos: list[dict[str, Any]] | None = None) -> Path:
    """Write jobs/<id>/spec.json (atomically, durably) for the adaptor; return its path."""
    spec = build_spec(layout, cfg, entry, repos)
    folder = layout.job_dir(spec["id"])
    if str(folder) in _JOB_DIRS and folder.is_dir():
        _JOB_DIRS.discard(str(folder))       # made (durably) by make_job_dir just before
    else:
        _ensure_in(folder)
    path = layout.job_spec(spec["id"])
    write_record(JOB_SPEC, path, spec)
    return path


# --------------------------------------------------------------------------- workspace


def _run_git(args: list[str], timeout: float, what: str) -> None:
    """Run `git ARGS` (dying with us); PrepareError("<what> failed: <git's stderr>") if it
    fails."""
    try:
        run_git(args, timeout=timeout, what=what)
    except GitError as exc:
        raise PrepareError(str(exc)) from None


def _clone(name: str, repo: RepoConfig, dest: Path, timeout: float, *,
           mirror: Path | None = None, refs: Refs | None = None) -> str | None:
    """Clone `repo` (from its mirror when given, then origin = the real URL) into dest,
    its files checked out by CHECKOUT_WORKERS processes (the job holds the lock meanwhile);
    the commit checked out when known without asking git (None: read it from the clone).
    From a mirror (whose refs, when given, were just read), by hard links and one git
    read-tree (scheduler.linkclone) when it can, else with git clone."""
    branch = f" branch {repo.branch!r}" if repo.branch else ""
    if mirror is not None:
        try:
            made = linkclone.clone(mirror, repo.branch, repo.url, dest,
                                   checkout_workers=CHECKOUT_WORKERS, timeout=timeout,
                                   what=f"git read-tree of repository {name!r} "
                                        f"({repo.url}{branch}) from its mirror", refs=refs)
        except GitError as exc:
            raise PrepareError(str(exc)) from None
        if made is not None:
            return made
    cmd = ["-c", f"checkout.workers={CHECKOUT_WORKERS}", "clone", "--quiet"]
    if repo.branch:
        cmd += ["--branch", repo.branch]
    cmd += ["--", str(mirror) if mirror is not None else repo.url, str(dest)]
    _run_git(cmd, timeout, f"git clone of repository {name!r} ({repo.url}{branch})")
    if mirror is not None:
        _run_git(["-C", str(dest), "remote", "set-url", "origin", repo.url], timeout,
                 f"setting origin of repository {name!r} to {repo.url}")
    return None


def _mirrors(names: list[str], known: Mapping[str, RepoConfig],
             mirrors_dir: str | os.PathLike[str] | None,
             timeout: float) -> dict[str, tuple[Path | None, Refs | None]]:
    """Each repository's freshly fetched mirror, with its refs when they were read on the
    way ((None, None) each when there are no mirrors)."""
    if mirrors_dir is None:
        return dict.fromkeys(names, (None, None))
    try:
        return {name: ensure_mirror_refs(name, known[name], mirrors_dir, timeout=timeout)
                for name in names}
    except MirrorError as exc:
        raise PrepareError(str(exc)) from None


def _remove_leftovers(ws: Path) -> None:
    """Remove the staging folders earlier attempts at `ws` left (a scheduler killed while
    cloning), as far as can be: a git such a scheduler left running may still write in
    one, and what cannot be removed now the reaper takes once the job is over."""
    try:
        names = [e.name for e in os.scandir(ws.parent)
                 if staging_owner(e.name) == ws.name]
    except OSError:
        return
    for name in names:
        try:
            remove_tree(ws.parent / name)
        except OSError:
            continue


def _into_place(staging: Path, ws: Path) -> bool:
    """Rename the finished `staging` to `ws`, its parent fsynced; True. When another
    attempt put a workspace there first (a scheduler reopened while this clone ran), that
    one is kept and this one removed: False."""
    placed = True
    try:
        os.rename(staging, ws)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not ws.is_dir():
            raise
        remove_tree(staging)
        placed = False
    REAL.fsync_dir(str(ws.parent))
    return placed


def prepare_workspace(cfg: Config, entry: Mapping[str, Any], *,
                      repositories: Mapping[str, RepoConfig] | None = None,
                      mirrors_dir: str | os.PathLike[str] | None = None,
                      clone_timeout: float = CLONE_TIMEOUT,
                      fetch_timeout: float = FETCH_TIMEOUT,
                      heads: dict[str, str] | None = None,
                      made: Made | None = None) -> Path:
    """Make the job's workspace and return it: an empty folder, or fresh clones of its repos.

    A job that resumes another's session (`resume_of`) runs in that job's workspace: it
    is used as it is, and PrepareError says so when it is gone (never made anew).
    One repository: the workspace is the clone. Several: one subfolder each, named after
    the repository. `git clone --branch B` when the repository names a branch, else the
    remote's default branch. `repositories` (e.g. the config's plus those registered with
    `repo add`) defaults to cfg.repositories. With `mirrors_dir` the repositories' mirrors
    there are created or fetched first and the workspace is cloned from them, origin set to
    the real URL (the caller holds the repositories' locks); None clones from the URLs.
    Idempotent: a complete workspace is returned as is (nothing is fetched), a half-made
    one (a crash mid-clone) is removed and redone. PrepareError on failure, carrying git's
    stderr; nothing half-made is left behind by a failure. `heads`, when given, receives
    the commit each repository cloned here was checked out at, where that is known
    without reading the clone (workspace_repos takes it as the base). `made`: the job's
    workspace made ahead (make_ahead), renamed into place when the mirrors, once fetched,
    are still exactly what it was made from; else it is left where it is (the caller
    removes it: `made.staging` still exists).
    """
    ws = workspace_path(cfg, entry)
    if ws.is_dir():
        return ws
    if entry.get("resume_of"):
        raise PrepareError(f"the workspace {ws} of job {entry['resume_of']}, whose session "
                           "this job resumes, no longer exists")
    if ws.exists() or ws.is_symlink():
        raise PrepareError(f"workspace {ws} exists and is not a folder")
    known = cfg.repositories if repositories is None else repositories
    names = [str(r) for r in entry.get("repos") or []]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PrepareError(f"unknown repository {unknown[0]!r} (not in the configuration "
                           "nor registered with `batchctl repo add`)")
    if len(set(names)) != len(names):
        raise PrepareError(f"repository listed twice: {', '.join(names)}")
    _ensure_once(ws.parent)
    if not names:
        try:
            os.mkdir(ws)
        except FileExistsError:
            pass
        REAL.fsync_dir(str(ws.parent))
        return ws
    mirrors = _mirrors(names, known, mirrors_dir, fetch_timeout)
    if made is not None and _fits(made, ws, names, known, mirrors):
        try:
            placed = _into_place(made.staging, ws)
        except FileNotFoundError:            # removed meanwhile (never by this scheduler):
            pass                             # cloned as always
        else:
            if heads is not None and placed:
                heads.update(made.tips)
            return ws
    if _int(entry.get("attempts")) not in (None, 0, 1):
        _remove_leftovers(ws)          # an interrupted attempt's (a relaunch's only)
    staging = workspace_staging(ws, secrets.token_hex(6))
    try:
        if len(names) == 1:
            mirror, refs = mirrors[names[0]]
            tips = {names[0]: _clone(names[0], known[names[0]], staging, clone_timeout,
                                     mirror=mirror, refs=refs)}
        else:
            os.mkdir(staging)
            tips = {}
            for name in names:
                mirror, refs = mirrors[name]
                tips[name] = _clone(name, known[name], staging / name, clone_timeout,
                                    mirror=mirror, refs=refs)
        placed = _into_place(staging, ws)
    except BaseException:
        remove_tree(staging)
        raise
    if heads is not None and placed:
        heads.update({name: tip for name, tip in tips.items() if tip is not None})
    return ws


def _fits(made: Made, ws: Path, names: list[str], known: Mapping[str, RepoConfig],
          mirrors: Mapping[str, tuple[Path | None, Refs | None]]) -> bool:
    """Whether a workspace made ahead is the one a clone now would make: the same folder,
    repositories, URLs and branches, and every mirror, just fetched, at the refs it was
    made from (then every object those refs reach was linked, and packed-refs, HEAD and
    the checkout are what they would be now)."""
    if made.ws != ws or sorted(made.bases) != sorted(names):
        return False
    for name in names:
        basis, repo = made.bases[name], known[name]
        mirror, refs = mirrors[name]
        if mirror is None or basis.url != repo.url or basis.branch != repo.branch:
            return False
        if refs is None:                     # fetched: read what the fetch left
            refs = read_refs(mirror) if plain_config(mirror) is not None else None
        if refs != basis.refs:
            return False
    return True


def make_ahead(cfg: Config, entry: Mapping[str, Any], *,
               repositories: Mapping[str, RepoConfig], mirrors_dir: str | os.PathLike[str],
               locked: Callable[[], AbstractContextManager[object]] = nullcontext,
               clone_timeout: float = CLONE_TIMEOUT) -> Made | None:
    """Make the workspace of a job still waiting for its locks from its repositories'
    mirrors as they are now, never fetched here (their lock is another job's), in a
    staging folder of its own beside the workspace (`.prep.<id>+<token>`, a fresh token),
    as the grant would (scheduler.linkclone): inside `locked()` (the mirrors' in-process
    locks, scheduler.ahead: no fetch of this scheduler runs meanwhile) each mirror's refs
    are read and its objects hard-linked, the refs, config and HEAD written; then, the
    mirrors free again, one read-tree each, which reads only the staging folder.
    None, nothing left, when it cannot be made so: a job that resumes another's workspace,
    a workspace already there, a mirror missing, of another URL or not of the plain kind, a
    branch it lacks. GitError if a read-tree fails (nothing left either). At the grant,
    prepare_workspace(made=) uses it when the fetched mirrors still have the refs it was
    made from."""
    if entry.get("resume_of"):
        return None
    ws = workspace_path(cfg, entry)
    names = [str(r) for r in entry.get("repos") or []]
    if (not names or len(set(names)) != len(names) or any(n not in repositories for n in names)
            or ws.exists() or ws.is_symlink()):
        return None
    _ensure_once(ws.parent)
    staging = workspace_staging(ws, secrets.token_hex(6))
    dest = {n: staging if len(names) == 1 else staging / n for n in names}
    bases: dict[str, Basis] = {}
    tips: dict[str, str] = {}
    try:
        with locked():
            if len(names) > 1:
                os.mkdir(staging)
            for name in names:
                repo, mirror = repositories[name], mirror_path(mirrors_dir, name)
                if mirror_url(mirror) != repo.url or plain_config(mirror) is None:
                    break
                refs = read_refs(mirror)
                tip = None if refs is None else linkclone.link(mirror, repo.branch, repo.url,
                                                               dest[name], refs=refs)
                if refs is None or tip is None:
                    break
                bases[name], tips[name] = Basis(repo.url, repo.branch, refs), tip
        if len(tips) < len(names):
            remove_tree(staging)
            return None
        for name in names:
            repo = repositories[name]
            branch = f" branch {repo.branch!r}" if repo.branch else ""
            linkclone.checkout(dest[name], checkout_workers=CHECKOUT_WORKERS,
                               timeout=clone_timeout,
                               what=f"git read-tree of repository {name!r} ({repo.url}"
                                    f"{branch}) ahead")
    except BaseException:
        remove_tree(staging)
        raise
    return Made(staging, ws, bases, tips)


#: Seconds `git rev-parse HEAD` of a fresh clone may take.
_REV_PARSE_TIMEOUT = 60.0


def _head(path: Path) -> str | None:
    """The commit checked out at `path` (`git rev-parse HEAD`), None when it has none (an
    empty repository) or cannot be read. GIT_DIR is given, so git neither looks above the
    folder nor refuses a workspace another account (an agent's `user`) owns. Read from the
    clone's files when they are of the plain kind (state.gitrefs): no git process."""
    refs = read_refs(path / ".git") if (path / ".git").is_dir() else None
    if refs is not None and refs.head_oid is not None:
        return refs.head_oid
    try:
        out = run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
                      timeout=_REV_PARSE_TIMEOUT, what=f"git rev-parse HEAD in {path}",
                      env={"GIT_DIR": str(path / ".git"), "GIT_WORK_TREE": str(path)})
    except GitError:
        return None
    return out.strip() or None


def _recorded_bases(layout: Layout, job_id: str) -> dict[str, str | None] | None:
    """The bases job `job_id`'s spec recorded, by repository; None without a usable spec."""
    got = read_record(JOB_SPEC, layout.job_spec(job_id), owner=False)
    if not isinstance(got, dict) or not isinstance(got.get("repos"), list):
        return None
    return {str(r.get("name")): r.get("base") if isinstance(r.get("base"), str) else None
            for r in got["repos"] if isinstance(r, dict)}


def workspace_repos(layout: Layout, entry: Mapping[str, Any], ws: Path,
                    known: Mapping[str, RepoConfig],
                    heads: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The job's repositories as its spec names them: {name, path (the clone in the
    workspace), url (where a push goes), base}. `base` is the commit the clone is at, read
    right after the clone (before any agent ran: the spec that carries it is written,
    durably, before the launch); a relaunch keeps the bases its first spec recorded. A job
    resuming another's session (`resume_of`) runs in that job's workspace, so its base is
    that job's recorded base (its changes then count from the clone, the whole session's);
    the workspace's HEAD if that spec is gone. `heads`: the commits prepare_workspace
    just checked out (read from the clone for a repository not in it).
    Runs git: called on a `prepare` thread, off the scheduler's loop."""
    names = [str(r) for r in entry.get("repos") or []]
    resumed = entry.get("resume_of")
    inherited = _recorded_bases(layout, str(entry["id"]))    # a relaunch: the first clone's
    if inherited is None and isinstance(resumed, str):
        inherited = _recorded_bases(layout, resumed)
    out = []
    for name in names:
        path = ws if len(names) == 1 else ws / name
        repo = known.get(name)
        if inherited is not None and name in inherited:
            base = inherited[name]
        elif heads is not None and name in heads:
            base = heads[name]
        else:
            base = _head(path)
        out.append({"name": name, "path": str(path),
                    "url": repo.url if repo is not None else None, "base": base})
    return out


# --------------------------------------------------------------------------- kill


def kill_group(pid: int | None, start: int | None, sig: int = signal.SIGTERM) -> bool:
    """Send `sig` to the process group led by the adaptor (pid, start); True if sent.

    Refuses (False) unless `pid` is alive with exactly that start time, so a reused pid is
    never signalled: no start time, no signal. The adaptor leads its own process group
    (setsid); should it not, only the adaptor itself is signalled. Processes of a group
    whose leader is already gone are found by their BATCHD_JOB_DIR instead
    (supervisor.state.proc.job_processes; their pgid may be reused).
    """
    if pid is None or start is None or pid <= 1 or not alive(pid, start):
        return False
    try:
        leader = os.getpgid(pid) == pid
        if leader:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
