"""`batchctl repo add/list/remove` (supervisor.ctl.repos): exit codes, messages, --json,
nothing written on a refusal. Real git remotes in tmp dirs; batchd is down throughout."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, RepoConfig
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.ctl.repos import LIST_FIELDS, run_repo, setup_repo
from supervisor.state.layout import Layout

CONFIG = "/etc/batchd/batchd.yaml"


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                          "-c", "init.defaultBranch=main", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_remote(root: Path, name: str) -> Path:
    """A bare remote whose default branch (HEAD) is `trunk`, with a `main` branch too."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "on main", cwd=work)
    git("checkout", "-q", "-b", "trunk", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "on trunk", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    return bare


def parser() -> argparse.ArgumentParser:
    """`batchctl repo ...` as batchctl.build_parser wires a command (setup, then --json)."""
    top = argparse.ArgumentParser(prog="batchctl")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("repo")
    setup_repo(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_repo)
    return top


class Run:
    """One state dir and configuration; `run(*argv)` -> (exit code, stdout, stderr)."""

    def __init__(self, tmp_path: Path, **repos: RepoConfig) -> None:
        self.state = tmp_path / "state"
        self.cfg = Config(state_dir=self.state, workspace_dir=tmp_path / "ws",
                          repositories=dict(repos), source=CONFIG)
        self.layout = Layout(self.state)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        try:
            args = parser().parse_args(["repo", *argv])
        except SystemExit as exc:
            return int(exc.code or 0), "", ""
        out, err = io.StringIO(), io.StringIO()
        ctx = Ctx(cfg=self.cfg, layout=self.layout, json=args.json, out=out, err=err)
        try:
            code = int(args.run(ctx, args))
        except CtlError as exc:          # as batchctl.main prints it
            err.write(f"batchctl: {exc}\n")
            code = exc.code
        return code, out.getvalue(), err.getvalue()

    def listing(self) -> list[dict[str, Any]]:
        code, out, err = self("list", "--json")
        assert (EXIT_OK, "") == (code, err)
        doc = json.loads(out)
        assert isinstance(doc, list)
        return doc

    def on_disk(self) -> bytes | None:
        f = self.layout.repos_file
        return f.read_bytes() if f.exists() else None


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remotes", "lib")


def test_add_list_remove_round_trip(tmp_path: Path, remote: Path) -> None:
    """add (default branch resolved), list shows config + registered, remove takes it out."""
    run = Run(tmp_path, app=RepoConfig("/srv/app.git"))
    code, out, err = run("add", "lib", str(remote), "--json")
    assert (EXIT_OK, "") == (code, err)
    added = json.loads(out)
    assert ("lib", str(remote), "trunk", False, "registered") == (
        added["name"], added["url"], added["branch"], added["exclusive"], added["source"])
    listing = run.listing()
    assert [{"name": "app", "url": "/srv/app.git", "branch": None, "exclusive": False,
             "source": "config", "added_at": None}, added] == listing
    assert list(LIST_FIELDS) == list(listing[1])
    code, out, err = run("remove", "lib", "--json")
    assert (EXIT_OK, "", {**added, "removed": True}) == (code, err, json.loads(out))
    assert ["app"] == [r["name"] for r in run.listing()]


def test_add_with_branch_and_exclusive(tmp_path: Path, remote: Path) -> None:
    """--branch is stored as given (no lookup), --exclusive is recorded."""
    run = Run(tmp_path)
    code, out, _ = run("add", "lib", str(remote), "--branch", "main", "--exclusive")
    assert (EXIT_OK, f"registered repository lib: {remote} branch main (exclusive)\n") == (
        code, out)
    assert [("lib", "main", True)] == [(r["name"], r["branch"], r["exclusive"])
                                       for r in run.listing()]


def test_json_flag_before_or_after_the_action(tmp_path: Path) -> None:
    """`repo --json list` and `repo list --json` both print one JSON array."""
    run = Run(tmp_path)
    assert [(EXIT_OK, "[]\n", ""), (EXIT_OK, "[]\n", "")] == [
        run("list", "--json"), run("--json", "list")]


def test_list_as_a_table(tmp_path: Path, remote: Path) -> None:
    """Without --json: one aligned row per repository; none at all is said on stderr."""
    run = Run(tmp_path)
    assert (EXIT_OK, "", "no repositories\n") == run("list")
    run = Run(tmp_path, app=RepoConfig("/srv/app.git", exclusive=True))
    run("add", "lib", str(remote))
    code, out, _ = run("list")
    assert (EXIT_OK, [
        "NAME  SOURCE      BRANCH     EXCLUSIVE  URL",
        "app   config      (default)  yes        /srv/app.git",
        f"lib   registered  trunk      no         {remote}"]) == (code, out.splitlines())


def test_works_with_no_state_dir_yet(tmp_path: Path, remote: Path) -> None:
    """list reads nothing and creates nothing; add creates the state dir and the registry."""
    run = Run(tmp_path)
    assert [] == run.listing()
    assert not run.state.exists()
    assert EXIT_OK == run("add", "lib", str(remote))[0]
    assert ["repos.json", "repos.lock"] == sorted(p.name for p in run.state.iterdir())


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["add", "bad/name", "/srv/x.git", "--branch", "main"], EXIT_USAGE,
     "batchctl: invalid repository name 'bad/name' (1-64 letters, digits, '.', '_', '-', "
     "starting with a letter or digit)"),
    (["add", "x", "ftp://host/x.git", "--branch", "main"], EXIT_USAGE,
     "batchctl: repository 'x': unsupported URL scheme 'ftp' in 'ftp://host/x.git' "
     "(a local path or an http, https, ssh, git or file URL)"),
    (["add", "x", "/srv/x.git", "--branch", "a..b"], EXIT_USAGE,
     "batchctl: repository 'x': not a valid git branch name: 'a..b'"),
    (["add", "app", "/srv/x.git", "--branch", "main"], EXIT_USAGE,
     f"batchctl: repository 'app' is already defined in the configuration ({CONFIG}); "
     "choose another name"),
    (["add", "lib", "/srv/x.git", "--branch", "main"], EXIT_USAGE,
     "batchctl: repository 'lib' is already registered ({remote}); "
     "`batchctl repo remove lib` first"),
    (["add", "gone", "{tmp}/gone.git"], EXIT_FAILED,
     "batchctl: cannot reach {tmp}/gone.git: fatal: '{tmp}/gone.git' does not appear to be a "
     "git repository"),
    (["remove", "app"], EXIT_FAILED,
     f"batchctl: repository 'app' is defined in the configuration ({CONFIG}), not "
     "registered: edit the configuration to remove it"),
    (["remove", "ghost"], EXIT_FAILED, "batchctl: no such repository: ghost"),
    (["remove", "-x"], EXIT_USAGE, ""),                      # argparse: not a NAME
    (["remove", ".x"], EXIT_USAGE, "batchctl: invalid repository name '.x'"),
    (["add", "x"], EXIT_USAGE, ""),                           # argparse: URL missing
    ([], EXIT_USAGE, ""),                                     # argparse: no action
    (["frobnicate"], EXIT_USAGE, ""),
])
def test_refusals_exit_codes_and_messages_change_nothing(
        tmp_path: Path, remote: Path, argv: list[str], code: int, message: str) -> None:
    """Every refusal: its exit code (2 bad input, 1 failed / not found), one clear message
    on stderr, nothing on stdout, and the registry and listing exactly as before."""
    run = Run(tmp_path, app=RepoConfig("/srv/app.git"))
    assert EXIT_OK == run("add", "lib", str(remote))[0]
    before = (run.on_disk(), run.listing())
    tmp = str(tmp_path)
    got_code, out, err = run(*[a.replace("{tmp}", tmp) for a in argv])
    expected = message.replace("{tmp}", tmp).replace("{remote}", str(remote))
    assert (code, "") == (got_code, out)
    assert err.startswith(expected)
    assert before == (run.on_disk(), run.listing())


def test_a_refused_first_add_creates_no_registry(tmp_path: Path) -> None:
    """An unreachable remote on a fresh state dir: exit 1 and no repos.json at all."""
    run = Run(tmp_path)
    assert EXIT_FAILED == run("add", "x", str(tmp_path / "nope.git"))[0]
    assert None is run.on_disk()


def test_a_corrupt_registry_is_named_and_moved_aside_by_add(tmp_path: Path) -> None:
    """list names the unreadable file (and lists the config's); add moves it aside."""
    run = Run(tmp_path, app=RepoConfig("/srv/app.git"))
    run.state.mkdir()
    run.layout.repos_file.write_text("not json")
    code, out, err = run("list", "--json")
    assert (EXIT_OK, ["app"]) == (code, [r["name"] for r in json.loads(out)])
    assert "repos.json is corrupt" in err
    code, _, err = run("add", "new", "/srv/new.git", "--branch", "main")
    moved = [p.name for p in run.state.iterdir() if ".corrupted." in p.name]
    assert (EXIT_OK, 1, ["app", "new"]) == (code, len(moved),
                                            [r["name"] for r in run.listing()])
    assert "moved aside" in err
