"""The repository registry and mirrors (state.repos): real files, real git, real flock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.config import Config, RepoConfig
from supervisor.state.layout import REPOS, Layout, read_record, write_record
from supervisor.state.repos import (
    RepoError,
    add,
    all_repositories,
    default_branch,
    push_refusal,
    read_registry,
    registered,
    registry_lock,
    remove,
)
from tests.helpers import git, make_remote

T0 = 1_800_000_000.0


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
    ("ok", "/srv/x.git", "ma\udcffin", "not a valid git branch name: 'ma\\udcffin'"),
    ("ok", "/srv/x.git", "ma\tin", "not a valid git branch name: 'ma\\tin'"),
    ("ok", "/srv/\udcff.git", "main", "URL not valid UTF-8 text: '\\udcff' at character 5"),
    ("ok", "https://h/x\x00", "main", "URL contains a NUL character"),
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
    with pytest.raises(RepoError, match=re.escape(needle)) as info:
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


def test_push_refusal_knows_only_what_the_url_tells(tmp_path: Path) -> None:
    """git:// is read-only (no push); a writable local repository, file:// or a path, and
    remote URLs are left to the push itself (None)."""
    assert "read-only git protocol" in (push_refusal("git://example.com/x.git") or "")
    bare, _ = make_remote(tmp_path, "app")
    assert [None, None, None, None] == [push_refusal(u) for u in (
        str(bare), bare.as_uri(), "https://example.com/x.git", "ssh://h/x.git")]
