"""Results end to end: a real batchd runs shell jobs that change real git clones of local
bare repositories; what `status --json`, `diff`, `jobs` and the bare remotes show.

The proof of CONTRACT.md "Results": `changes` and the patch match what git itself says of
the workspace (applying the patch to `base` gives the workspace, byte for byte and mode for
mode), the workspace is left as it was, `--push` leaves a branch with that very tree and
the configured author, and a push that git refuses fails the job naming git's words.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.helpers import Rig, git, make_remote, until

#: What every job below does to its clone (cwd): one commit of its own, then modified,
#: added (untracked, one of them binary), deleted, renamed and re-moded files, and files
#: its own .gitignore hides (which are not changes).
EDIT = r"""set -e
g() { git -c user.name=agent -c user.email=agent@example.com -c commit.gpgsign=false "$@"; }
echo committed > committed.txt; g add committed.txt; g commit -qm "the agent's own commit"
echo changed >> which
echo new > added.txt
printf '\000\001\002\003changed' > data.bin
printf '\377\376\000binary' > new.bin
rm gone.txt
mv keep.txt kept.txt
chmod +x tool.sh
printf 'node_modules/\n*.log\n' > .gitignore
mkdir -p node_modules/x; echo ignored > node_modules/x/i.js; echo log > run.log
"""

#: The paths EDIT changes, and how (status as changes.json says it).
EXPECTED = {"committed.txt": "added", "which": "modified", "added.txt": "added",
            "data.bin": "modified", "new.bin": "added", "gone.txt": "deleted",
            "kept.txt": "renamed", "tool.sh": "modified", ".gitignore": "added"}

CONFIG = """\
git: {{author_name: Batch Bot, author_email: bot@example.com}}
agents:
  shell: {{adaptor: command}}
repositories:
  app: {{url: {app}, branch: trunk}}
  lib: {{url: {lib}, branch: trunk}}
  hooked: {{url: {hooked}, branch: trunk}}
  daemon: {{url: "git://127.0.0.1:9/none.git", branch: trunk}}
"""


def _seed(bare: Path, work: Path) -> str:
    """Give the remote's trunk the files EDIT works on; the new tip's sha."""
    git("checkout", "-q", "trunk", cwd=work)
    (work / "keep.txt").write_text("".join(f"line {i} of a file to be renamed\n"
                                           for i in range(40)))
    (work / "gone.txt").write_text("to be deleted\n")
    (work / "tool.sh").write_text("echo tool\n")
    (work / "data.bin").write_bytes(b"\x00\x01\x02\x03original")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "files to change", cwd=work)
    git("push", "-q", "origin", "trunk", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One batchd; three seeded bare remotes (one whose pre-receive hook refuses every
    push) and a read-only git:// one."""
    root = tmp_path_factory.mktemp("results")
    remotes = {}
    for name in ("app", "lib", "hooked"):
        bare, work = make_remote(root, name)
        _seed(bare, work)
        remotes[name] = bare
    hook = remotes["hooked"] / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are closed today' >&2\nexit 1\n")
    hook.chmod(0o755)
    rig = Rig(root, CONFIG.format(**remotes))
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


def _tree_of(clone: Path) -> str:
    """The tree of the clone's worktree as `git add -A` sees it (.gitignore respected),
    computed through an index of the test's own."""
    env = {**os.environ, "GIT_INDEX_FILE": str(clone.parent / f".{clone.name}.test-index")}
    subprocess.run(["git", "add", "-A"], cwd=clone, env=env, check=True)
    out = subprocess.run(["git", "write-tree"], cwd=clone, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    os.unlink(env["GIT_INDEX_FILE"])
    return out


def _files(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file under `root` outside .git and the ignored ones: (content, executable)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", "node_modules")]
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(".log"):
                continue
            out[str(path.relative_to(root))] = (path.read_bytes(),
                                                bool(path.stat().st_mode & stat.S_IXUSR))
    return out


def _base_checkout(rig: Rig, name: str, base: str, dest: Path) -> None:
    bare = rig.root / f"{name}.git"
    git("clone", "-q", str(bare), str(dest))
    git("checkout", "-q", base, cwd=dest)


def _apply(patch: bytes, cwd: Path) -> None:
    done = subprocess.run(["git", "apply", "--binary", "-"], input=patch, cwd=cwd,
                          capture_output=True, check=False)
    assert 0 == done.returncode, done.stderr.decode()


def test_one_repository_changes_and_patch_match_git(rig: Rig, tmp_path: Path) -> None:
    """Commits, modified, untracked, binary, deleted, renamed and re-moded files are all in
    `changes` and the patch, ignored files are not; the patch applied to `base` gives the
    workspace; the clone's own index is left as it was; `jobs` shows the count."""
    job = rig.submit("--agent", "shell", "--repo", "app", "--prompt", EDIT)
    rec = rig.finished(job)
    assert "completed" == rec["state"], rec["reason"]
    ws = Path(rec["workspace"])
    base = git("--git-dir", str(rig.root / "app.git"), "rev-parse", "trunk")
    detail = json.loads(Path(rig.state, "jobs", job, "changes.json").read_text())
    paths = detail["repos"]["app"]["paths"]
    assert EXPECTED == {p["path"]: p["status"] for p in paths}
    assert {"path": "kept.txt", "old_path": "keep.txt"} == {
        k: v for k, v in next(p for p in paths if p["path"] == "kept.txt").items()
        if k in ("path", "old_path")}
    assert ("100644", "100755") == next((p["old_mode"], p["new_mode"]) for p in paths
                                        if p["path"] == "tool.sh")
    assert {"data.bin", "new.bin"} == {p["path"] for p in paths if p["binary"]}
    numstat = git("diff", "--numstat", "-M", base, _tree_of(ws), cwd=ws).splitlines()
    ins = sum(int(line.split("\t")[0]) for line in numstat if not line.startswith("-"))
    dels = sum(int(line.split("\t")[1]) for line in numstat if not line.startswith("-"))
    assert {"base": base, "head": git("rev-parse", "HEAD", cwd=ws), "files": len(EXPECTED),
            "insertions": ins, "deletions": dels, "branch": None,
            "commits": 1} == rec["changes"]["app"]
    patch = rig.ctl("diff", job)
    assert 0 == patch.returncode, patch.stderr.decode()
    assert patch.stdout == Path(rig.state, "jobs", job, "changes.patch").read_bytes()
    checkout = tmp_path / "applied"
    _base_checkout(rig, "app", base, checkout)
    _apply(patch.stdout, checkout)
    assert _files(ws) == _files(checkout)
    status = git("status", "--porcelain", cwd=ws).splitlines()
    assert "?? added.txt" in status            # the clone's own index never saw our add
    listing = rig.ctl("jobs").stdout.decode().splitlines()
    assert "FILES" in listing[0].split()
    row = next(line.split() for line in listing if line.startswith(job))
    assert str(len(EXPECTED)) in row


def test_two_repositories_one_patch_each_under_its_folder(rig: Rig, tmp_path: Path) -> None:
    """With two repositories each is examined in its subfolder; the one patch names paths
    under the folders and applied to both bases gives the whole workspace."""
    script = "cd app && { " + EDIT + "}; cd ../lib && echo lib-only > lib.txt"
    job = rig.submit("--agent", "shell", "--repo", "app", "--repo", "lib", "--prompt", script)
    rec = rig.finished(job)
    assert "completed" == rec["state"], rec["reason"]
    assert (len(EXPECTED), 1) == (rec["changes"]["app"]["files"], rec["changes"]["lib"]["files"])
    ws = Path(rec["workspace"])
    into = tmp_path / "both"
    into.mkdir()
    for name in ("app", "lib"):
        _base_checkout(rig, name, rec["changes"][name]["base"], into / name)
    _apply(rig.ctl("diff", job).stdout, into)
    for name in ("app", "lib"):
        assert _files(ws / name) == _files(into / name)


def test_push_makes_the_branch_and_again_changes_nothing(rig: Rig) -> None:
    """`--push` commits the workspace's tree with the configured author, the prompt's first
    line cut to 72 characters and the Batchd-Job trailer, to batchd/<id>; the record names
    the branch and the commit; a job without changes pushes nothing."""
    first = "x" * 80
    job = rig.submit("--agent", "shell", "--repo", "app", "--push",
                     "--prompt", f"# {first}\n{EDIT}")
    rec = rig.finished(job)
    assert "completed" == rec["state"], rec["reason"]
    bare = rig.root / "app.git"
    branch = f"batchd/{job}"
    tip = git("--git-dir", str(bare), "rev-parse", f"refs/heads/{branch}")
    assert {"branch": branch, "head": tip} == {k: rec["changes"]["app"][k]
                                               for k in ("branch", "head")}
    assert _tree_of(Path(rec["workspace"])) == git("--git-dir", str(bare), "rev-parse",
                                                   f"{tip}^{{tree}}")
    assert f"Batch Bot <bot@example.com>\n{('# ' + first)[:72]}\n\nBatchd-Job: {job}" == git(
        "--git-dir", str(bare), "log", "-1", "--format=%an <%ae>%n%B", tip)
    quiet = rig.submit("--agent", "shell", "--repo", "app", "--push", "--prompt", "true")
    rec = rig.finished(quiet)
    assert ("completed", 0, None) == (rec["state"], rec["changes"]["app"]["files"],
                                      rec["changes"]["app"]["branch"])
    refs = git("--git-dir", str(bare), "for-each-ref", "--format=%(refname)", "refs/heads/")
    assert f"refs/heads/batchd/{quiet}" not in refs.split()


def test_a_refused_push_fails_the_job_naming_git(rig: Rig) -> None:
    """A push the remote refuses (its pre-receive hook) fails the job; the reason carries
    git's own words; the changes are still collected."""
    job = rig.submit("--agent", "shell", "--repo", "hooked", "--push", "topic/x",
                     "--prompt", "echo more >> which")
    rec = rig.finished(job)
    assert "failed" == rec["state"]
    assert "pushes are closed today" in rec["reason"]
    assert "topic/x" in rec["reason"]
    assert (1, None) == (rec["changes"]["hooked"]["files"], rec["changes"]["hooked"]["branch"])


def test_a_job_without_repositories_has_no_changes(rig: Rig) -> None:
    """No repository: `changes` is empty, `diff` prints nothing and exits 0."""
    job = rig.submit("--agent", "shell", "--prompt", "echo hi > f")
    rec = rig.finished(job)
    assert ("completed", {}) == (rec["state"], rec["changes"])
    done = rig.ctl("diff", job)
    assert (0, b"") == (done.returncode, done.stdout)


@pytest.mark.parametrize(("argv", "says"), [
    (["--push"], "push needs a repository"),
    (["--repo", "app", "--push", "bad..name"], "check-ref-format"),
    (["--repo", "app", "--push=-x"], "check-ref-format"),
    (["--repo", "daemon", "--push"], "read-only"),
])
def test_push_refusals_exit_2_at_submit(rig: Rig, argv: list[str], says: str) -> None:
    """--push without a repository, a branch git refuses, a read-only remote: exit 2 at
    submit with a message naming why, and no job."""
    before = rig.json("jobs")
    done = rig.ctl("submit", "--agent", "shell", "--prompt", "true", *argv)
    assert 2 == done.returncode, done.stderr.decode()
    assert says in done.stderr.decode()
    assert before == rig.json("jobs")


def test_from_file_push_key(rig: Rig, tmp_path: Path) -> None:
    """The `push` key of a --from line: true pushes to batchd/<id>, a string to that
    branch; a bad branch name is refused naming the line."""
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"agent": "shell", "repos": ["lib"], "push": "feature/one",
                                "prompt": "echo one > one.txt"}) + "\n")
    [job] = rig.ctl("submit", "--from", str(good)).stdout.decode().split()
    rec = rig.finished(job)
    assert ("completed", "feature/one") == (rec["state"], rec["changes"]["lib"]["branch"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"agent": "shell", "repos": ["lib"], "push": "a b"}) + "\n")
    done = rig.ctl("submit", "--from", str(bad))
    assert 2 == done.returncode
    assert ":1:" in done.stderr.decode()
    shutil.rmtree(tmp_path)


def test_the_webhook_payload_carries_the_changes(rig: Rig) -> None:
    """The job record a webhook receiver gets has `changes`, as `status --json` shows it."""
    got: list[dict[str, object]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = rig.submit("--agent", "shell", "--repo", "lib", "--prompt", "echo x > x.txt",
                         "--callback", f"http://127.0.0.1:{server.server_port}/hook")
        rec = rig.finished(job)
        until("the webhook", lambda: got)
    finally:
        server.shutdown()
        server.server_close()
    assert rec["changes"] == got[0]["job"]["changes"]          # type: ignore[index]
    assert 1 == rec["changes"]["lib"]["files"]
