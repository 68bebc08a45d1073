"""What a job changed (adaptors._changes), against real git clones of local bare remotes:
the workspace is left as it was, every kind of change is listed, the patch is cut whole
file by whole file and marked, the push is deterministic (a second push changes nothing),
a retry replaces its earlier attempt's push, a resumed session builds on its own, and the
files are written so that a power cut leaves none, or both before the result."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adaptors._changes import (
    Collected,
    collect,
    commit_message,
    cut_patch,
    parse_diff,
    patch_counts,
    prefix_moves,
    write_changes,
)
from adaptors._spec import JobSpec, parse_spec
from supervisor.state.git import Account
from supervisor.state.layout import CHANGES, JOB_SPEC, RESULT, JobPaths, Layout, read_record
from supervisor.state.layout import write_record as write_rec
from supervisor.state.view import collected_patch
from tests.crashfs import CrashFS, explore
from tests.helpers import git, make_remote

CREATED = "2026-01-02T03:04:05Z"


def _spec(jobs: Path, job_id: str, ws: Path, url: Path | str | None, base: str | None,
          **more: Any) -> tuple[JobSpec, JobPaths]:
    """The spec of a one-repository job (its spec.json written too: retries read theirs)."""
    job_dir = jobs / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    body = {"id": job_id, "adaptor": "command", "prompt": more.pop("prompt", "edit things"),
            "workspace": str(ws), "created_at": CREATED,
            "repos": [{"name": "app", "path": str(ws),
                       "url": None if url is None else str(url), "base": base}],
            "git": {"author_name": "Bot", "author_email": "bot@example.com"}, **more}
    write_rec(JOB_SPEC, job_dir / "spec.json", body)
    return parse_spec(body, job_dir), JobPaths(job_dir)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """(bare remote, a clone of its trunk: the workspace, the base commit)."""
    bare, _work = make_remote(tmp_path, "app")
    ws = tmp_path / "ws"
    git("clone", "-q", "--branch", "trunk", str(bare), str(ws))
    yield bare, ws, git("rev-parse", "HEAD", cwd=ws)


def test_the_workspace_is_left_as_it_was(tmp_path: Path,
                                         remote: tuple[Path, Path, str]) -> None:
    """Collecting touches neither the clone's index nor its HEAD, refs or files: `git
    status` says the same before and after, and the index file is byte-identical."""
    _bare, ws, base = remote
    (ws / "which").write_text("edited\n")
    (ws / "untracked.txt").write_text("new\n")
    git("add", "which", cwd=ws)                            # something staged, too
    status = git("status", "--porcelain", cwd=ws)
    index = (ws / ".git" / "index").read_bytes()
    refs = git("for-each-ref", cwd=ws)
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    got = collect(spec, files, push=False)
    assert None is got.error
    assert (status, index, refs) == (git("status", "--porcelain", cwd=ws),
                                     (ws / ".git" / "index").read_bytes(),
                                     git("for-each-ref", cwd=ws))
    assert {"which": "modified", "untracked.txt": "added"} == {
        p["path"]: p["status"] for p in got.repos[0].paths}
    assert not (files.dir / ".changes").exists()           # the scratch folder is gone


def test_an_empty_repository_counts_every_file_as_added(tmp_path: Path) -> None:
    """A clone of an empty repository has no base and no HEAD: each file is added."""
    ws = tmp_path / "ws"
    ws.mkdir()
    git("init", "-q", cwd=ws)
    (ws / "a.txt").write_text("one\ntwo\n")
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, None)
    got = collect(spec, files, push=False)
    assert {"base": None, "head": None, "files": 1, "insertions": 2, "deletions": 0,
            "branch": None, "commits": None} == got.summary()["app"]


def test_paths_with_odd_bytes_are_listed_exactly(tmp_path: Path,
                                                 remote: tuple[Path, Path, str]) -> None:
    """-z output: a name with a tab, a newline or a non-ASCII letter is one path, as is."""
    _bare, ws, base = remote
    names = ["tab\there", "new\nline", "é.txt"]
    for name in names:
        (ws / name).write_text("x\n")
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    got = collect(spec, files, push=False)
    assert sorted(names) == sorted(p["path"] for p in got.repos[0].paths)


def test_line_counts_read_off_the_patch_are_gits(tmp_path: Path,
                                                remote: tuple[Path, Path, str]) -> None:
    """patch_counts gives what `git diff --numstat` says for modified, added, deleted,
    renamed-and-edited, binary, mode-only and empty files, and lines that look like
    headers ('--- x', '+++ y', '@@')."""
    _bare, ws, base = remote
    body = "".join(f"line {i}\n" for i in range(30))
    (ws / "moved.txt").write_text(body)
    (ws / "tool.sh").write_text("echo\n")
    git("add", "-A", cwd=ws)
    git("commit", "-qm", "more", cwd=ws)
    base = git("rev-parse", "HEAD", cwd=ws)
    (ws / "which").write_text("--- x\n+++ y\n@@ z\n-\n+\n")
    (ws / "moved.txt").rename(ws / "renamed.txt")
    (ws / "renamed.txt").write_text(body.replace("line 3\n", "line three\n"))
    (ws / "tool.sh").chmod(0o755)
    (ws / "bin").write_bytes(b"\0\1\2")
    (ws / "empty").write_bytes(b"")
    git("add", "-A", cwd=ws)
    patch = subprocess.run(["git", "diff", "--cached", "--binary", "-M", base], cwd=ws,
                           check=True, capture_output=True).stdout
    numstat = git("diff", "--cached", "--numstat", "-M", base, cwd=ws).splitlines()
    expected = [(a == "-", 0 if a == "-" else int(a), 0 if d == "-" else int(d))
                for a, d, _ in (line.split("\t", 2) for line in numstat)]
    assert 5 == len(expected)
    assert expected == patch_counts(patch)


def test_parse_diff_pairs_raw_and_numstat_records() -> None:
    """A rename's two names, a binary file's '-' counts and a deletion's null new mode."""
    raw = (b":100644 100644 aaa bbb R087\0old name\0new name\0"
           b":100644 000000 ccc 000 D\0gone\0"
           b":000000 100644 000 ddd A\0bin\0"
           b"3\t1\t\0old name\0new name\0" b"0\t4\tgone\0" b"-\t-\tbin\0")
    assert [
        {"path": "new name", "old_path": "old name", "status": "renamed", "similarity": 87,
         "old_mode": "100644", "new_mode": "100644", "binary": False, "insertions": 3,
         "deletions": 1},
        {"path": "gone", "old_path": None, "status": "deleted", "similarity": None,
         "old_mode": "100644", "new_mode": None, "binary": False, "insertions": 0,
         "deletions": 4},
        {"path": "bin", "old_path": None, "status": "added", "similarity": None,
         "old_mode": None, "new_mode": "100644", "binary": True, "insertions": 0,
         "deletions": 0},
    ] == parse_diff(raw)


def test_prefix_moves_puts_rename_lines_under_the_folder() -> None:
    """Only the rename/copy header lines gain the folder; content lines that look alike
    (they start with '+', '-' or ' ') do not; the total grows by what was added."""
    patch = (b"diff --git a/app/x b/app/y\nsimilarity index 90%\nrename from x\n"
             b"rename to y\n--- a/app/x\n+++ b/app/y\n-rename from z\n+\"quoted\"\n")
    paths = [{"status": "renamed"}]
    grown, total = prefix_moves(patch, len(patch), "app", paths)
    assert b"rename from app/x\nrename to app/y\n" in grown
    assert b"-rename from z\n" in grown
    assert len(grown) == total


def test_cut_patch_keeps_whole_file_diffs() -> None:
    """The cut falls before the first file diff that does not fit; none fits: nothing."""
    one, two = b"diff --git a/x b/x\n+1\n", b"diff --git a/y b/y\n+2\n"
    assert one == cut_patch(one + two, len(one) + 3)
    assert one + two == cut_patch(one + two, 1000)
    assert b"" == cut_patch(one, 5)


def test_a_patch_over_the_limit_is_cut_and_marked(tmp_path: Path,
                                                  remote: tuple[Path, Path, str]) -> None:
    """Past max_bytes the patch keeps whole files and ends with a marker line; the record
    says cut with the whole size, and `changes` still counts every file."""
    _bare, ws, base = remote
    for n in range(5):
        (ws / f"f{n}.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    whole = collect(spec, files, push=False)
    got = collect(spec, files, push=False, max_bytes=len(whole.patch) // 2)
    assert (True, 5, len(whole.patch)) == (got.cut, got.repos[0].files, got.patch_bytes)
    assert whole.summary() == got.summary()          # git counted the lines past the cut
    kept, marker = got.patch.rsplit(b"# batchd: patch cut", 1)
    assert whole.patch.startswith(kept)
    assert kept.endswith(b"\n") and kept.count(b"diff --git ") < 5
    assert b"changes.json lists every file\n" in marker
    record = got.record("j1")
    assert {"bytes": len(got.patch), "total_bytes": len(whole.patch), "cut": True} == {
        k: record["patch"][k] for k in ("bytes", "total_bytes", "cut")}


def test_commit_message_is_the_first_line_cut_and_the_trailer(tmp_path: Path) -> None:
    """The prompt's first line, cut to 72 characters, a blank line, the trailer; a blank
    first line gives a message naming the job."""
    spec, _ = _spec(tmp_path / "jobs", "j1", tmp_path, None, None, prompt="y" * 100 + "\nmore")
    assert f"{'y' * 72}\n\nBatchd-Job: j1\n" == commit_message(spec)
    spec, _ = _spec(tmp_path / "jobs", "j2", tmp_path, None, None, prompt="\n")
    assert "batchd job j2\n\nBatchd-Job: j2\n" == commit_message(spec)


def _tip(bare: Path, branch: str) -> str:
    return git("--git-dir", str(bare), "rev-parse", f"refs/heads/{branch}")


def test_a_second_push_of_the_same_job_changes_nothing(tmp_path: Path,
                                                       remote: tuple[Path, Path, str]) -> None:
    """The commit is a function of the job (tree, parent, message, author, submission
    time): collecting and pushing again pushes the same commit, without an error."""
    bare, ws, base = remote
    (ws / "which").write_text("pushed\n")
    spec, files = _spec(tmp_path / "jobs", "j1", ws, bare, base, push="batchd/j1")
    first = collect(spec, files, push=True)
    assert None is first.error
    tip = _tip(bare, "batchd/j1")
    again = collect(spec, files, push=True)
    assert (None, tip, tip) == (again.error, _tip(bare, "batchd/j1"),
                                again.summary()["app"]["head"])
    assert ("Bot <bot@example.com>", base) == (
        git("--git-dir", str(bare), "log", "-1", "--format=%an <%ae>", tip),
        git("--git-dir", str(bare), "rev-parse", f"{tip}^"))


def test_a_retry_replaces_its_earlier_attempts_push(tmp_path: Path,
                                                    remote: tuple[Path, Path, str]) -> None:
    """A retry (retry_of, even of a retry) pushing to the same branch replaces the commit an
    earlier attempt left there; a job that is not its retry is refused by git (not a fast
    forward) and the error names the push."""
    bare, ws, base = remote
    jobs = tmp_path / "jobs"
    (ws / "which").write_text("attempt 1\n")
    spec, files = _spec(jobs, "a1", ws, bare, base, push="feature")
    assert None is collect(spec, files, push=True).error
    _spec(jobs, "a2", ws, bare, base, push="feature", retry_of="a1")   # never pushed
    (ws / "which").write_text("attempt 3\n")
    spec, files = _spec(jobs, "a3", ws, bare, base, push="feature", retry_of="a2")
    got = collect(spec, files, push=True)
    assert (None, _tip(bare, "feature")) == (got.error, got.summary()["app"]["head"])
    assert "attempt 3\n" == git("--git-dir", str(bare), "show", "feature:which") + "\n"
    (ws / "which").write_text("stranger\n")
    spec, files = _spec(jobs, "other", ws, bare, base, push="feature")
    refused = collect(spec, files, push=True)
    assert refused.error is not None
    assert "push of repository 'app' to branch 'feature'" in refused.error
    assert "attempt 3\n" == git("--git-dir", str(bare), "show", "feature:which") + "\n"


def test_a_resumed_session_builds_on_its_own_push(tmp_path: Path,
                                                  remote: tuple[Path, Path, str]) -> None:
    """A job resuming another's session, pushing to that job's branch, adds a commit on
    top of it (a fast forward) instead of being refused."""
    bare, ws, base = remote
    jobs = tmp_path / "jobs"
    (ws / "which").write_text("session part 1\n")
    spec, files = _spec(jobs, "s1", ws, bare, base, push="work")
    assert None is collect(spec, files, push=True).error
    first = _tip(bare, "work")
    (ws / "more.txt").write_text("part 2\n")
    spec, files = _spec(jobs, "s2", ws, bare, base, push="work", resume_of="s1")
    got = collect(spec, files, push=True)
    assert (None, first) == (got.error, git("--git-dir", str(bare), "rev-parse", "work^"))


def test_a_push_to_nowhere_fails_naming_git(tmp_path: Path,
                                            remote: tuple[Path, Path, str]) -> None:
    """A remote that does not exist: the error says which push and what git said; the
    changes are still listed."""
    _bare, ws, base = remote
    (ws / "which").write_text("x\n")
    spec, files = _spec(tmp_path / "jobs", "j1", ws, tmp_path / "nowhere.git", base,
                        push="batchd/j1")
    got = collect(spec, files, push=True)
    assert got.error is not None and "does not appear to be a git repository" in got.error
    assert (1, None) == (got.repos[0].files, got.repos[0].branch)


def test_a_broken_clone_is_an_error_not_an_exception(tmp_path: Path) -> None:
    """A workspace that is no clone: the repository's entry carries the error, its counts
    are null, and the job's error names it."""
    ws = tmp_path / "ws"
    ws.mkdir()
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, None)
    got = collect(spec, files, push=False)
    assert got.error is not None and "changes of repository 'app' not collected" in got.error
    assert (None, None) == (got.summary()["app"]["files"], got.summary()["app"]["insertions"])


def test_changes_then_result_survive_every_power_cut(tmp_path: Path) -> None:
    """changes.patch, changes.json, then result.json: after a power cut at any point a
    reader sees no patch (not collected) or the whole of it with its record, never a
    patch without its record nor a result without both."""
    patch = b"diff --git a/x b/x\n+1\n"
    got = Collected([], patch=patch, patch_bytes=len(patch))

    def setup(root: str) -> None:
        os.makedirs(os.path.join(root, "jobs", "j1"))

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        files = JobPaths(Path(root, "jobs", "j1"))
        write_changes(files, got, fs=fs)
        yield
        write_rec(RESULT, files.result, {"id": "j1", "exit_code": 0, "finished_at": "x"},
                  fs=fs)
        yield

    def recover(root: str) -> Any:
        layout = Layout(Path(root))
        shown = collected_patch(layout, "j1")
        record = read_record(CHANGES, layout.job_changes("j1"), owner=False)
        result = read_record(RESULT, layout.job_result("j1"), owner=False)
        return (None if shown is None else shown.read_bytes(),
                isinstance(record, dict), isinstance(result, dict))

    report = explore(tmp_path, setup=setup, workload=workload, recover=recover,
                     expected=[(None, False, False), (patch, True, False),
                               (patch, True, True)])
    assert {0, 1, 2} == set(report.recovered_to)


def test_git_is_run_with_the_workspace_hooks_off(tmp_path: Path,
                                                 remote: tuple[Path, Path, str]) -> None:
    """A hook the agent planted in the clone never runs when batchd collects or pushes."""
    bare, ws, base = remote
    mark = tmp_path / "hook-ran"
    for hook in ("pre-push", "post-index-change", "pre-commit", "reference-transaction"):
        path = ws / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {mark}\n")
        path.chmod(0o755)
    (ws / "which").write_text("x\n")
    spec, files = _spec(tmp_path / "jobs", "j1", ws, bare, base, push="batchd/j1")
    assert None is collect(spec, files, push=True).error
    assert not mark.exists()
    subprocess.run(["git", "fsck", "--no-progress"], cwd=ws, check=True, capture_output=True)


def test_a_pushed_tree_holds_untracked_files_written_long_ago(
        tmp_path: Path, remote: tuple[Path, Path, str]) -> None:
    """An untracked file whose mtime is old (so git trusts a stat-clean index entry) is in
    the pushed tree with its content: the push's index has every blob written."""
    bare, ws, base = remote
    old = ws / "old.txt"
    old.write_text("written an hour ago\n")
    os.utime(old, (os.path.getmtime(old) - 3600,) * 2)
    spec, files = _spec(tmp_path / "jobs", "j1", ws, bare, base, push="batchd/j1")
    got = collect(spec, files, push=True)
    assert None is got.error
    assert "written an hour ago" == git("--git-dir", str(bare), "show", "batchd/j1:old.txt")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another account needs root")
def test_git_runs_as_the_agents_account(remote: tuple[Path, Path, str]) -> None:
    """An agent run as another user (`user:`) has its workspace handed over: git examines
    and commits it as that account (its filters never run as root); the scratch index is
    that account's; the push (from batchd's own scratch repository) succeeds."""
    nobody = pwd.getpwnam("nobody")
    bare, ws, base = remote
    root = Path(tempfile.mkdtemp(prefix="batchd-changes-", dir="/tmp"))
    try:
        root.chmod(0o755)
        owned = root / "ws"
        shutil.copytree(ws, owned, symlinks=True)
        (owned / "which").write_text("as nobody\n")
        (owned / "new.txt").write_text("new\n")
        for dirpath, _dirs, names in os.walk(owned):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
            for name in names:
                os.chown(os.path.join(dirpath, name), nobody.pw_uid, nobody.pw_gid)
        jobs = root / "jobs"
        spec, files = _spec(jobs, "j1", owned, bare, base, push="batchd/j1")
        jobs.chmod(0o755)
        files.dir.chmod(0o755)
        got = collect(spec, files, push=True, account=Account(nobody.pw_uid, nobody.pw_gid),
                      home="/")
        assert (None, 2) == (got.error, got.repos[0].files)
        assert "as nobody" == git("--git-dir", str(bare), "show", "batchd/j1:which")
    finally:
        shutil.rmtree(root)


def test_a_full_disk_during_collection_is_waited_out(
        remote: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adaptor's collection on a full disk (ENOSPC raised, or git's words saying so)
    is tried again until it works, as result.json is: the job is not failed for it; any
    other error is the job's reason."""
    from adaptors import _runtime
    from adaptors._changes import Collected
    _bare, ws, base = remote
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    (ws / "new.txt").write_text("hello\n")
    tries: list[object] = [OSError(errno.ENOSPC, "No space left on device"),
                           Collected([], error="git: fatal: No space left on device")]
    real = _runtime.collect

    def flaky(*args: Any, **kw: Any) -> Collected:
        if tries:
            step = tries.pop(0)
            if isinstance(step, OSError):
                raise step
            assert isinstance(step, Collected)
            return step
        return real(*args, **kw)

    monkeypatch.setattr(_runtime, "collect", flaky)
    monkeypatch.setattr(_runtime, "_RESULT_RETRY_S", 0.0)
    outcome = _runtime._Outcome(exit_code=0)
    summary = _runtime._collect_changes(spec, files, outcome)
    assert ([], None, 1) == (tries, outcome.reason, summary["app"]["files"])
    tries[:] = [OSError(errno.EACCES, "Permission denied")]
    outcome = _runtime._Outcome(exit_code=0)
    _runtime._collect_changes(spec, files, outcome)
    assert "changes not saved: [Errno 13] Permission denied" == outcome.reason


def test_a_full_disk_while_writing_the_prompt_is_waited_out(
        remote: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt file on a full disk (ENOSPC) is tried again until written — the job is
    not failed `spawn_failed` for it (found by a chaos run); another error still is."""
    from adaptors import _runtime
    _bare, ws, base = remote
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    real = _runtime.write_bytes
    errors = [OSError(errno.ENOSPC, "No space left on device")] * 2

    def flaky(*args: Any, **kw: Any) -> None:
        if errors:
            raise errors.pop()
        real(*args, **kw)

    monkeypatch.setattr(_runtime, "write_bytes", flaky)
    monkeypatch.setattr(_runtime, "_RESULT_RETRY_S", 0.0)
    assert (None, b"edit things") == (_runtime._write_prompt(spec, files, None),
                                      files.prompt.read_bytes())
    errors[:] = [OSError(errno.EACCES, "Permission denied")]
    why = _runtime._write_prompt(spec, files, None)
    assert why is not None and why.startswith("spawn_failed: cannot write the prompt file")


def _git_killed_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, word: str,
                   times: int) -> Path:
    """A `git` first on PATH that SIGKILLs itself the first `times` times it is asked for
    `word` (counted in the returned file), and is the real git otherwise."""
    real = shutil.which("git")
    assert real is not None
    bin_dir, count = tmp_path / "killbin", tmp_path / "kills"
    bin_dir.mkdir()
    count.write_text("")
    (bin_dir / "git").write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" {word} "*)\n'
        f'  if [ "$(wc -c < {count})" -lt {times} ]; then printf x >> {count}; '
        "kill -KILL $$; fi;;\nesac\n"
        f'exec {real} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return count


def test_a_collection_whose_git_is_killed_is_run_again(
        tmp_path: Path, remote: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that kills the collection's git (the OOM killer; a chaos run's stray
    SIGKILL, 10-minute run seed 408534317) is not the job's failure: the read-only
    examination is run again and the changes are whole."""
    _bare, ws, base = remote
    (ws / "which").write_text("edited\n")
    kills = _git_killed_on(tmp_path, monkeypatch, "rev-parse", 2)
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    got = collect(spec, files, push=False)
    assert (None, 2) == (got.error, len(kills.read_text()))
    assert 1 == got.summary()["app"]["files"]


def test_a_push_whose_git_is_killed_is_pushed_again(
        tmp_path: Path, remote: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A push killed by a signal is made again (the commit is deterministic, the push
    idempotent): the branch holds the job's commit and the job does not fail."""
    bare, ws, base = remote
    (ws / "which").write_text("pushed\n")
    kills = _git_killed_on(tmp_path, monkeypatch, "push", 1)
    spec, files = _spec(tmp_path / "jobs", "j1", ws, bare, base, push="batchd/j1")
    got = collect(spec, files, push=True)
    assert (None, 1) == (got.error, len(kills.read_text()))
    assert "pushed" == git("show", "batchd/j1:which", cwd=bare)


def test_a_git_killed_every_time_fails_the_collection_naming_the_signal(
        tmp_path: Path, remote: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A git that is killed on every try: the tries end (5 of them) and the repository's
    error says git was killed by signal 9."""
    _bare, ws, base = remote
    kills = _git_killed_on(tmp_path, monkeypatch, "rev-parse", 100)
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    got = collect(spec, files, push=False)
    assert got.error is not None and "killed by signal 9" in got.error
    assert 5 == len(kills.read_text())


def test_an_index_copy_cut_short_by_a_full_disk_is_waited_out_not_read(
        remote: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary index copied from the clone's on a full disk (half written, then
    ENOSPC; chaos seed 494710626): the half copy is removed, never handed to git ("index
    file smaller than expected" failed the job), and the collection waits for room, then
    lists the change."""
    from adaptors import _changes, _runtime
    _bare, ws, base = remote
    spec, files = _spec(tmp_path / "jobs", "j1", ws, None, base)
    (ws / "which").write_text("edited\n")
    left: list[bool] = []
    real_copy = shutil.copy2
    fails = [True]

    def half_copy(src: Path, dst: Path) -> None:
        if fails:
            fails.pop()
            Path(dst).write_bytes(Path(src).read_bytes()[:20])
            raise OSError(errno.ENOSPC, "No space left on device")
        left.append(Path(dst).exists())
        real_copy(src, dst)

    monkeypatch.setattr(_changes.shutil, "copy2", half_copy)
    monkeypatch.setattr(_runtime, "_RESULT_RETRY_S", 0.0)
    outcome = _runtime._Outcome(exit_code=0)
    summary = _runtime._collect_changes(spec, files, outcome)
    assert ([False], None, 1) == (left, outcome.reason, summary["app"]["files"])
