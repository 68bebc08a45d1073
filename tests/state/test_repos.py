"""The repository registry and mirrors (state.repos): real files, real git, real flock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.config import Config, RepoConfig
from supervisor.state.layout import REPOS, Layout, read_record, write_record
from supervisor.state.proc import alive
from supervisor.state.repos import (
    MIRROR_PREP_PREFIX,
    MirrorError,
    RepoError,
    add,
    all_repositories,
    default_branch,
    ensure_mirror,
    git_env,
    read_registry,
    registered,
    registry_lock,
    remove,
)

T0 = 1_800_000_000.0


# --------------------------------------------------------------------------- git helpers


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                          "-c", "init.defaultBranch=main", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_remote(root: Path, name: str) -> tuple[Path, Path]:
    """(bare remote, its work tree): HEAD of the remote is `trunk`; `main` also exists."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "which").write_text(f"{name} main\n")
    git("add", "which", cwd=work)
    git("commit", "-q", "-m", "on main", cwd=work)
    git("checkout", "-q", "-b", "trunk", cwd=work)
    (work / "which").write_text(f"{name} trunk\n")
    git("commit", "-q", "-am", "on trunk", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


def push_commit(work: Path, text: str, branch: str = "trunk") -> str:
    """Commit `text` into `which` on `branch` and push it; the new commit's sha."""
    git("checkout", "-q", branch, cwd=work)
    (work / "which").write_text(text)
    git("commit", "-q", "-am", text.strip(), cwd=work)
    git("push", "-q", "origin", branch, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def make_cfg(tmp_path: Path, **repos: RepoConfig) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
                  repositories=dict(repos), source="/etc/batchd/batchd.yaml")


def snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def no_network(url: str) -> str:
    raise AssertionError(f"the remote {url} must not be asked")


# --------------------------------------------------------------------------- default branch


def test_default_branch_is_the_remotes_head(tmp_path: Path) -> None:
    """`git ls-remote --symref URL HEAD` names the remote's default branch (trunk here)."""
    bare, _ = make_remote(tmp_path, "app")
    assert "trunk" == default_branch(str(bare))


def test_default_branch_of_an_unreachable_remote(tmp_path: Path) -> None:
    """An unreachable remote: exit-1 error "cannot reach <url>: <git's stderr>"."""
    url = str(tmp_path / "nowhere.git")
    with pytest.raises(RepoError) as info:
        default_branch(url)
    assert (False, True, True) == (
        info.value.usage, str(info.value).startswith(f"cannot reach {url}: "),
        "does not appear to be a git repository" in str(info.value))


def test_default_branch_of_an_empty_remote(tmp_path: Path) -> None:
    """A remote without commits has no default branch to take: say so, ask for --branch."""
    bare = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(bare))
    with pytest.raises(RepoError, match="give --branch"):
        default_branch(str(bare))


# --------------------------------------------------------------------------- registry


def test_add_registers_with_the_resolved_default_branch(tmp_path: Path) -> None:
    """`add` without a branch stores the remote's default; readers see it as a RepoConfig."""
    bare, _ = make_remote(tmp_path, "app")
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    entry = add(cfg, layout, "app", str(bare), now=T0)
    expected = {"url": str(bare), "branch": "trunk", "exclusive": False,
                "added_at": "2027-01-15T08:00:00.000Z"}
    assert expected == entry
    rec = read_record(REPOS, layout.repos_file, owner=False)
    assert isinstance(rec, dict)
    assert ({"app": expected}, {"app": RepoConfig(str(bare), "trunk", False)}) == (
        rec["repos"], registered(layout))


def test_add_with_a_branch_asks_no_remote(tmp_path: Path) -> None:
    """--branch given: nothing is resolved (the remote may even be down), stored as given."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    add(cfg, layout, "lib", "https://example.invalid/lib.git", branch="dev", exclusive=True,
        resolve=no_network)
    assert {"lib": RepoConfig("https://example.invalid/lib.git", "dev", True)} == (
        registered(layout))


def test_a_relative_local_path_is_made_absolute(tmp_path: Path) -> None:
    """A local path is stored absolute, taken from the current folder (`base`)."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    add(cfg, layout, "app", "remotes/app.git", branch="main", base=tmp_path)
    assert str(tmp_path / "remotes" / "app.git") == registered(layout)["app"].url


def test_all_repositories_merges_and_the_config_wins(tmp_path: Path) -> None:
    """Config entries plus registered ones; on a name clash the configuration's entry wins."""
    cfg = make_cfg(tmp_path, app=RepoConfig("/srv/app.git"))
    layout = Layout(cfg.state_dir)
    layout.root.mkdir(parents=True)
    write_record(REPOS, layout.repos_file, {"repos": {
        "app": {"url": "/elsewhere/app.git", "branch": "x", "exclusive": True},
        "lib": {"url": "/srv/lib.git", "branch": "main", "exclusive": False}}})
    assert {"app": RepoConfig("/srv/app.git"), "lib": RepoConfig("/srv/lib.git", "main")} == (
        all_repositories(cfg, layout))


@pytest.mark.parametrize(("name", "url", "branch", "needle"), [
    ("-bad", "/srv/x.git", "main", "invalid repository name '-bad'"),
    ("a/b", "/srv/x.git", "main", "invalid repository name 'a/b'"),
    ("x" * 65, "/srv/x.git", "main", "invalid repository name"),
    ("ok", "ftp://host/x.git", "main", "unsupported URL scheme 'ftp'"),
    ("ok", "https://", "main", "incomplete URL"),
    ("ok", "  ", "main", "expected a non-empty URL"),
    ("ok", "/srv/x.git", "a..b", "not a valid git branch name: 'a..b'"),
    ("ok", "/srv/x.git", "", "not a valid git branch name: ''"),
    ("app", "/srv/x.git", "main", "'app' is already defined in the configuration "
                                  "(/etc/batchd/batchd.yaml)"),
    ("lib", "/srv/x.git", "main", "'lib' is already registered (/srv/lib.git)"),
])
def test_add_refuses_bad_input_and_writes_nothing(tmp_path: Path, name: str, url: str,
                                                  branch: str, needle: str) -> None:
    """Bad name, URL or branch, a configured or registered name: usage error, no change."""
    cfg = make_cfg(tmp_path, app=RepoConfig("/srv/app.git"))
    layout = Layout(cfg.state_dir)
    add(cfg, layout, "lib", "/srv/lib.git", branch="main")
    before = snapshot(layout.repos_file)
    with pytest.raises(RepoError, match=needle.replace("(", r"\(").replace(")", r"\)")) as info:
        add(cfg, layout, name, url, branch=branch, resolve=no_network)
    assert (True, before) == (info.value.usage, snapshot(layout.repos_file))


def test_add_of_an_unreachable_remote_writes_nothing(tmp_path: Path) -> None:
    """No --branch and the remote cannot be reached: exit-1 error, no registry created."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    url = str(tmp_path / "gone.git")
    with pytest.raises(RepoError, match=f"cannot reach {url}: ") as info:
        add(cfg, layout, "gone", url)
    assert (False, False) == (info.value.usage, layout.repos_file.exists())


def test_remove_round_trip(tmp_path: Path) -> None:
    """remove returns the entry it had; the others stay as they were."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    a = add(cfg, layout, "a", "/srv/a.git", branch="main", now=T0)
    add(cfg, layout, "b", "/srv/b.git", branch="dev", now=T0)
    assert a == remove(cfg, layout, "a")
    assert {"b": RepoConfig("/srv/b.git", "dev")} == registered(layout)


@pytest.mark.parametrize(("name", "usage", "needle"), [
    ("app", False, "repository 'app' is defined in the configuration "
                   "(/etc/batchd/batchd.yaml), not registered"),
    ("ghost", False, "no such repository: ghost"),
    (".bad", True, "invalid repository name '.bad'"),
])
def test_remove_refusals_write_nothing(tmp_path: Path, name: str, usage: bool,
                                       needle: str) -> None:
    """A configured, unknown or malformed name: refused with its exit class, no change."""
    cfg = make_cfg(tmp_path, app=RepoConfig("/srv/app.git"))
    layout = Layout(cfg.state_dir)
    add(cfg, layout, "lib", "/srv/lib.git", branch="main")
    before = snapshot(layout.repos_file)
    with pytest.raises(RepoError) as info:
        remove(cfg, layout, name)
    assert (usage, needle, before) == (
        info.value.usage, str(info.value)[:len(needle)], snapshot(layout.repos_file))


def test_a_corrupt_registry_reads_empty_and_its_owner_moves_it_aside(tmp_path: Path) -> None:
    """Readers see no registered repositories and leave the file; `add` quarantines it."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    layout.root.mkdir(parents=True)
    layout.repos_file.write_bytes(b'{"repos": {"half')
    reg = read_registry(layout)
    assert ({}, 1, True) == (reg.repos, len(reg.problems), layout.repos_file.exists())
    notes: list[str] = []
    add(cfg, layout, "new", "/srv/new.git", branch="main", note=notes.append)
    moved = [n for n in os.listdir(layout.root) if n.startswith("repos.json.corrupted.")]
    assert (1, 1, ["new"]) == (len(moved), len(notes), sorted(registered(layout)))
    assert "moved aside" in notes[0]


def test_a_bad_entry_is_skipped_by_readers_and_kept_by_writers(tmp_path: Path) -> None:
    """One malformed entry does not hide the others, and `add` does not drop it."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    layout.root.mkdir(parents=True)
    odd = {"url": 42}
    write_record(REPOS, layout.repos_file, {"repos": {
        "odd": odd, "ok": {"url": "/srv/ok.git", "branch": None, "exclusive": False}}})
    assert ["ok"] == sorted(registered(layout))
    add(cfg, layout, "new", "/srv/new.git", branch="main")
    rec = json.loads(layout.repos_file.read_bytes())
    assert (odd, ["new", "ok"]) == (rec["repos"]["odd"], sorted(registered(layout)))


# --------------------------------------------------------------------------- the flock


def _flock_waiters(path: Path) -> int:
    """How many processes wait (blocked) for an flock on `path` (/proc/locks "->" lines)."""
    st = path.stat()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 6 and parts[1] == "->" and parts[2] == "FLOCK" and parts[6] == want:
            count += 1
    return count


_ADDER = """
import sys
from pathlib import Path
from supervisor.config import Config
from supervisor.state.layout import Layout
from supervisor.state.repos import add
state = Path(sys.argv[1])
cfg = Config(state_dir=state, workspace_dir=state / "ws")
add(cfg, Layout(state), sys.argv[2], "/srv/" + sys.argv[2] + ".git", branch="main")
"""


def test_concurrent_adds_both_land(tmp_path: Path) -> None:
    """Two `repo add`s racing (both blocked on repos.lock, then let go) keep both names:
    each reads the registry under the flock, so neither overwrites the other."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    procs: list[subprocess.Popen[bytes]] = []
    with registry_lock(layout):
        for name in ("one", "two"):
            procs.append(subprocess.Popen([sys.executable, "-c", _ADDER, str(layout.root),
                                           name], cwd=Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + 60
        while _flock_waiters(layout.repos_lock) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (2, False) == (_flock_waiters(layout.repos_lock), layout.repos_file.exists())
    assert [0, 0] == [p.wait(timeout=60) for p in procs]
    assert ["one", "two"] == sorted(registered(layout))


# --------------------------------------------------------------------------- mirrors


def test_a_mirror_is_created_bare_with_the_remote_head(tmp_path: Path) -> None:
    """First use: `git clone --mirror` into mirrors/<name>.git, HEAD = the remote's."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "state" / "mirrors"
    path = ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert (mirrors / "app.git", "true", "refs/heads/trunk", ["app.git"]) == (
        path, git("--git-dir", str(path), "rev-parse", "--is-bare-repository"),
        git("--git-dir", str(path), "symbolic-ref", "HEAD"), os.listdir(mirrors))


def test_a_mirror_is_made_once_then_fetched(tmp_path: Path) -> None:
    """Second use fetches into the same mirror (same inode): a new remote commit appears,
    a deleted remote branch is pruned."""
    bare, work = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    repo = RepoConfig(str(bare))
    first = ensure_mirror("app", repo, mirrors).stat().st_ino
    sha = push_commit(work, "app trunk 2\n")
    git("push", "-q", "origin", "--delete", "main", cwd=work)
    path = ensure_mirror("app", repo, mirrors)
    assert (first, sha, "") == (
        path.stat().st_ino, git("--git-dir", str(path), "rev-parse", "refs/heads/trunk"),
        git("--git-dir", str(path), "branch", "--list", "main"))


def test_a_half_made_mirror_is_cleaned_and_redone(tmp_path: Path) -> None:
    """A crash mid-clone leaves .prep.<name>.git: the next ensure removes it and clones;
    another repository's temp folder (maybe in use under its own lock) is left alone."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    (mirrors / f"{MIRROR_PREP_PREFIX}app.git" / "objects").mkdir(parents=True)
    (mirrors / f"{MIRROR_PREP_PREFIX}lib.git").mkdir()
    ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert [f"{MIRROR_PREP_PREFIX}lib.git", "app.git"] == sorted(os.listdir(mirrors))


def test_a_fetch_failure_carries_git_stderr_and_keeps_the_mirror(tmp_path: Path) -> None:
    """The remote vanished: MirrorError with git's stderr; the mirror is still there."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    repo = RepoConfig(str(bare))
    path = ensure_mirror("app", repo, mirrors)
    bare.rename(tmp_path / "moved.git")
    with pytest.raises(MirrorError, match="does not appear to be a git repository") as info:
        ensure_mirror("app", repo, mirrors)
    assert str(info.value).startswith(f"git fetch of repository 'app' ({bare}) into its mirror "
                                      "failed: ")
    assert "refs/heads/trunk" == git("--git-dir", str(path), "symbolic-ref", "HEAD")


def test_a_failed_first_clone_leaves_nothing(tmp_path: Path) -> None:
    """No mirror yet and the remote is unreachable: MirrorError, no mirror, no temp."""
    mirrors = tmp_path / "mirrors"
    with pytest.raises(MirrorError, match="git clone --mirror of repository 'x'"):
        ensure_mirror("x", RepoConfig(str(tmp_path / "none.git")), mirrors)
    assert [] == os.listdir(mirrors)


def test_a_mirror_of_another_url_is_replaced(tmp_path: Path) -> None:
    """A name removed and registered again elsewhere: the old mirror is not reused."""
    app, _ = make_remote(tmp_path, "app")
    lib, _ = make_remote(tmp_path, "lib")
    mirrors = tmp_path / "mirrors"
    ensure_mirror("x", RepoConfig(str(app)), mirrors)
    path = ensure_mirror("x", RepoConfig(str(lib)), mirrors)
    assert (str(lib), "lib trunk") == (
        git("--git-dir", str(path), "config", "remote.origin.url"),
        git("--git-dir", str(path), "show", "trunk:which"))


def test_junk_at_the_mirror_path_is_replaced(tmp_path: Path) -> None:
    """A folder that is not a git mirror (or a file) at mirrors/<name>.git is cloned over."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    (mirrors / "app.git").mkdir(parents=True)
    (mirrors / "app.git" / "junk").write_text("x")
    path = ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert (False, "app trunk") == ((path / "junk").exists(),
                                    git("--git-dir", str(path), "show", "HEAD:which"))


def test_the_mirror_head_follows_the_remote_default(tmp_path: Path) -> None:
    """A repository without a branch follows the remote's default branch when it changes;
    one with a branch leaves the mirror's HEAD alone."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/main")
    path = ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert "refs/heads/main" == git("--git-dir", str(path), "symbolic-ref", "HEAD")
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/trunk")
    ensure_mirror("app", RepoConfig(str(bare), branch="trunk"), mirrors)
    assert "refs/heads/main" == git("--git-dir", str(path), "symbolic-ref", "HEAD")


def test_git_gives_up_on_a_stalled_remote_rather_than_waiting_for_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every git batchd runs never prompts, and aborts a transfer that stalls (http, ssh);
    an operator's own settings of those variables are kept."""
    for var in ("GIT_SSH_COMMAND", "GIT_HTTP_LOW_SPEED_LIMIT", "GIT_HTTP_LOW_SPEED_TIME"):
        monkeypatch.delenv(var, raising=False)
    env = git_env()
    assert ("0", "1024", "60") == (env["GIT_TERMINAL_PROMPT"], env["GIT_HTTP_LOW_SPEED_LIMIT"],
                                   env["GIT_HTTP_LOW_SPEED_TIME"])
    assert "ServerAliveInterval=15" in env["GIT_SSH_COMMAND"]
    monkeypatch.setenv("GIT_HTTP_LOW_SPEED_TIME", "600")
    assert "600" == git_env()["GIT_HTTP_LOW_SPEED_TIME"]


def test_git_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A git started through git_command is SIGKILLed when its starter dies (a scheduler
    killed mid-clone leaves no git writing into the mirror its successor redoes)."""
    pid_file = tmp_path / "git.pid"
    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from supervisor.state.repos import git_command\n"
        "p = subprocess.Popen(git_command(['-c', 'alias.wait=!sleep 30', 'wait']))\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n")])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the starter never started git"
            time.sleep(0.01)
        git_pid = int(pid_file.read_text())
        comm = Path(f"/proc/{git_pid}/comm")
        while comm.read_text().strip() != "git":    # past setpriv's prctl and exec
            assert time.monotonic() < deadline, "git never started"
            time.sleep(0.01)
    finally:
        starter.kill()
        starter.wait()
    deadline = time.monotonic() + 10
    while alive(git_pid, None):
        assert time.monotonic() < deadline, "git outlived the process that started it"
        time.sleep(0.01)
