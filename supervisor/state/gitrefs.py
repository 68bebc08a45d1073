"""Reading a git repository's refs and config from its files, without running git.

Only the plain layout is read (the `files` ref store: loose refs under refs/, then
packed-refs; HEAD; a config of version 0 without extensions); anything else — a reftable,
a linked worktree, a ref being updated (`*.lock`), an include in the config, a value that
needs unquoting — reads as None ("cannot tell"), and the caller runs git instead. A None
is never a wrong answer, only a slower one: callers use these reads to SKIP git work
(scheduler.mirrors: a fetch when the remote's refs equal the mirror's; scheduler.linkclone:
a workspace made by hard links), so every doubt must fall back to git. docs/LOCKS.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "Refs",
    "config_value",
    "local_gitdir",
    "plain_config",
    "read_refs",
]

_OID = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_SYMREF_DEPTH = 5
#: Files of a repository's top folder that mean "not the plain layout read here".
_NOT_PLAIN = ("commondir", "reftable")


@dataclass(frozen=True)
class Refs:
    """A repository's refs: every ref under refs/ with its object id (symbolic refs
    resolved, dangling ones left out, as git advertises them) and where HEAD points (a
    ref name when symbolic, else None)."""

    refs: dict[str, str]
    head_ref: str | None
    head_oid: str | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeError):
        return None


def plain_config(gitdir: Path) -> dict[tuple[str, str], list[str]] | None:
    """The repository's own config file as {(section, key): [values]} (section lowercased,
    with its subsection as written: `remote "origin"` -> 'remote.origin'), or None when it
    cannot be read simply: missing, an include, a quoted or escaped value, a continued
    line, a format version other than 0, or any extension."""
    text = _read(gitdir / "config")
    if text is None:
        return None
    out: dict[tuple[str, str], list[str]] = {}
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        head = re.fullmatch(r'\[\s*([A-Za-z0-9.-]+)(?:\s+"([^"\\]*)")?\s*\]', line)
        if head is not None:
            name = head.group(1).lower()
            if name in ("include", "includeif", "extensions") or "." in name:
                return None
            section = name if head.group(2) is None else f"{name}.{head.group(2)}"
            continue
        if section is None:
            return None
        key, eq, value = line.partition("=")
        key = key.strip().lower()
        value = value.strip()
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key) or any(c in value for c in '"\\;#'):
            return None
        out.setdefault((section, key), []).append(value if eq else "true")
    version = out.get(("core", "repositoryformatversion"), ["0"])
    return out if version == ["0"] else None


def config_value(gitdir: Path, section: str, key: str) -> str | None:
    """The one value of `section.key` in the repository's own config (simply read), None
    when absent, given more than once, or the file cannot be read simply."""
    config = plain_config(gitdir)
    values = None if config is None else config.get((section, key.lower()))
    return values[0] if values is not None and len(values) == 1 else None


def _plain(gitdir: Path) -> bool:
    return (gitdir / "HEAD").is_file() and (gitdir / "refs").is_dir() \
        and not any((gitdir / name).exists() for name in _NOT_PLAIN) \
        and plain_config(gitdir) is not None


def local_gitdir(url: str) -> Path | None:
    """The git folder of a repository `url` names on this machine (an absolute path or a
    file:/// URL: its .git folder, or the folder itself when bare), None for any other
    URL or layout."""
    if url.startswith("/"):
        path = Path(url)
    elif url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            return None
        path = Path(unquote(parts.path))
    else:
        return None
    if not path.is_absolute():
        return None
    for gitdir in (path / ".git", path):
        if gitdir.is_dir() and not gitdir.is_symlink() and _plain(gitdir):
            return gitdir
    return None


def _loose(gitdir: Path) -> dict[str, str] | None:
    out: dict[str, str] = {}
    top = gitdir / "refs"
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in files:
            if name.endswith(".lock"):
                return None              # a ref is being written: cannot tell
            path = Path(root) / name
            text = _read(path)
            if text is None:
                if not path.exists():
                    continue             # removed (packed, deleted) while we looked
                return None
            out[path.relative_to(gitdir).as_posix()] = text.strip()
    return out


def _packed(gitdir: Path) -> dict[str, str] | None:
    text = _read(gitdir / "packed-refs")
    if text is None:
        return {} if not (gitdir / "packed-refs").exists() else None
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("^"):
            continue
        oid, _, name = line.partition(" ")
        if _OID.fullmatch(oid) is None or not name.startswith("refs/"):
            return None
        out[name] = oid
    return out


def _resolve(value: str, raw: dict[str, str]) -> str | None:
    for _ in range(_SYMREF_DEPTH):
        if _OID.fullmatch(value) is not None:
            return value
        if not value.startswith("ref: "):
            return None
        target = value[len("ref: "):].strip()
        if target not in raw:
            return None
        value = raw[target]
    return None


def read_refs(gitdir: Path) -> Refs | None:
    """The refs of the repository at `gitdir`, or None when they cannot be read simply.

    Loose refs are read before packed-refs (git's own order: `pack-refs` writes
    packed-refs before it removes the loose files, so no ref is missed, and a loose ref
    wins). A ref that does not hold an object id or a symbolic ref -> None."""
    if not _plain(gitdir):
        return None
    loose = _loose(gitdir)
    packed = _packed(gitdir) if loose is not None else None
    head = _read(gitdir / "HEAD")
    if loose is None or packed is None or head is None:
        return None
    raw = {**packed, **loose}
    refs: dict[str, str] = {}
    for name, value in raw.items():
        if _OID.fullmatch(value) is None and not value.startswith("ref: "):
            return None
        oid = _resolve(value, raw)
        if oid is not None:
            refs[name] = oid
    head = head.strip()
    if head.startswith("ref: "):
        head_ref: str | None = head[len("ref: "):].strip()
        head_oid = refs.get(head_ref) if head_ref is not None else None
    elif _OID.fullmatch(head) is not None:
        head_ref, head_oid = None, head
    else:
        return None
    return Refs(refs, head_ref, head_oid)
