"""state.gitrefs: a repository's refs and config read from its files, checked against git."""

from __future__ import annotations

from pathlib import Path

from supervisor.state.gitrefs import config_value, local_gitdir, plain_config, read_refs
from tests.helpers import git, make_remote, push_commit


def _git_refs(gitdir: Path) -> dict[str, str]:
    out = git("--git-dir", str(gitdir), "for-each-ref", "--format=%(objectname) %(refname)")
    return {name: oid for oid, name in (line.split(" ") for line in out.splitlines())}


def test_refs_read_from_files_are_what_git_says(tmp_path: Path) -> None:
    """Packed and loose refs (a loose one newer than its packed copy), an annotated tag, a
    symbolic ref resolved, HEAD's target: the same as git's own reading."""
    bare, work = make_remote(tmp_path, "app")
    git("--git-dir", str(bare), "pack-refs", "--all")
    push_commit(work, "newer\n")                      # loose refs/heads/trunk over packed
    git("tag", "-a", "-m", "v1", "v1", cwd=work)
    git("push", "-q", "origin", "v1", cwd=work)
    git("--git-dir", str(bare), "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    refs = read_refs(bare)
    assert refs is not None
    assert (_git_refs(bare), "refs/heads/trunk",
            git("--git-dir", str(bare), "rev-parse", "HEAD")) == (
        refs.refs, refs.head_ref, refs.head_oid)


def test_anything_unusual_reads_as_none(tmp_path: Path) -> None:
    """A ref being written (`.lock`), a reftable, an include in the config, a ref that is
    not an object id: None (the caller runs git), never a guess."""
    bare, _ = make_remote(tmp_path, "app")
    lock = bare / "refs" / "heads" / "main.lock"
    lock.write_text("0" * 40 + "\n")
    got = [read_refs(bare)]
    lock.unlink()
    (bare / "reftable").mkdir()
    got.append(read_refs(bare))
    (bare / "reftable").rmdir()
    config = (bare / "config").read_text()
    (bare / "config").write_text(config + "[include]\n\tpath = other\n")
    got.append(read_refs(bare))
    (bare / "config").write_text(config)
    (bare / "refs" / "heads" / "odd").write_text("not an id\n")
    got.append(read_refs(bare))
    assert [None, None, None, None] == got


def test_config_values_and_what_is_not_read_simply(tmp_path: Path) -> None:
    """A plain value is read; a quoted or escaped value, a second value or another
    format version make the file unreadable simply (None)."""
    bare, _ = make_remote(tmp_path, "app")
    git("--git-dir", str(bare), "config", "remote.origin.url", "/srv/git/app.git")
    plain = config_value(bare, "remote.origin", "url")
    git("--git-dir", str(bare), "config", "remote.origin.url", "/srv/a b;c.git")
    quoted = config_value(bare, "remote.origin", "url")
    git("--git-dir", str(bare), "config", "core.repositoryformatversion", "1")
    assert ("/srv/git/app.git", None, None) == (plain, quoted, plain_config(bare))


def test_local_gitdir_finds_paths_and_file_urls_only(tmp_path: Path) -> None:
    """A bare repository by path or file:// URL, a work tree's .git; ssh, https, a missing
    folder or a relative path: None."""
    bare, work = make_remote(tmp_path, "app")
    assert [bare, bare, work / ".git", None, None, None, None] == [
        local_gitdir(str(bare)), local_gitdir(bare.as_uri()), local_gitdir(str(work)),
        local_gitdir("ssh://host/app.git"), local_gitdir("https://host/app.git"),
        local_gitdir(str(tmp_path / "gone.git")), local_gitdir("app.git")]
