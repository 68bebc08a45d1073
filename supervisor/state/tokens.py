"""API tokens: the tokens file (names, scopes, SHA-256 hashes) and the check of a presented token.

The file, `api.tokens_file` (default `<state_dir>/api/tokens`, layout.TOKENS):

    {"tokens": {NAME: {"sha256": hex, "scope": "read"|"submit"|"admin", "created_at"}}}

Written ONLY by batchctl (`token add` / `token revoke`), under an exclusive flock on
`<tokens_file>.lock`, by write_record (temp file, fsync, rename, fsync folder) with mode
0600: a crash leaves the old file or the new one, and two concurrent commands both land.
A token is 32 random bytes (secrets.token_urlsafe), printed once by `token add` and never
stored: only its SHA-256 is (a 256-bit random secret cannot be guessed from its hash, so a
slow password hash would add nothing). Tokens and hashes are never logged.

The api reads the file with owner=False through `TokenTable`, which stats it on every
check and re-reads it when its identity (inode, size, mtime) changed: a revoke takes
effect on the very next request, with no window an inotify event would leave. A missing
or corrupt file holds no token (every request is 401) and the reason is kept for the log.
A presented token is compared with every stored hash in constant time
(hmac.compare_digest), whichever matches, so timing tells nothing about the table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import NAME_PATTERN, Config
from supervisor.state.atomic import Corrupt, Missing, ensure_dir, file_stamp, read_json
from supervisor.state.clock import iso_now
from supervisor.state.flock import exclusive
from supervisor.state.layout import TOKENS, Layout, write_record

__all__ = [
    "SCOPES",
    "TokenError",
    "TokenTable",
    "add",
    "allows",
    "hash_token",
    "list_tokens",
    "read_tokens",
    "revoke",
    "tokens_path",
]

#: Scopes, weakest first: a token allows its own scope and every weaker one.
SCOPES: tuple[str, ...] = ("read", "submit", "admin")
_RANK = {scope: i for i, scope in enumerate(SCOPES)}
_PREFIX = "bdt_"
_NAME_HELP = "1-64 letters, digits, '.', '_', '-', starting with a letter or digit"


class TokenError(Exception):
    """A refused `token add/revoke/list`; `usage` is True for bad input (exit 2), else exit 1."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


def tokens_path(cfg: Config, layout: Layout) -> Path:
    """The tokens file: `api.tokens_file`, else `<state_dir>/api/tokens`."""
    return cfg.api.tokens_file if cfg.api.tokens_file is not None else layout.tokens_file


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def allows(have: str, need: str) -> bool:
    """Whether scope `have` covers `need` (read < submit < admin)."""
    return _RANK.get(have, -1) >= _RANK[need]


def _validate(obj: Any) -> str | None:
    problem = TOKENS.validate(obj)
    if problem is None and not isinstance(obj["tokens"], dict):
        problem = "tokens is not an object"
    return problem


@dataclass(frozen=True)
class _Entry:
    name: str
    scope: str
    sha256: str
    created_at: str | None


def read_tokens(path: Path) -> tuple[dict[str, _Entry], str | None]:
    """The usable entries of the tokens file and what was wrong with it (None: nothing).

    Never moves the file (batchctl, its writer, moves a corrupt one aside when it next
    writes). Entries of the wrong shape are skipped and named."""
    got = read_json(path, validate=_validate, move_corrupt=False)
    if isinstance(got, Missing):
        return {}, None
    if isinstance(got, Corrupt):
        return {}, f"{path} is unusable ({got.reason})"
    out: dict[str, _Entry] = {}
    bad: list[str] = []
    for name, body in got["tokens"].items():
        if (isinstance(body, dict) and body.get("scope") in _RANK
                and isinstance(body.get("sha256"), str) and len(body["sha256"]) == 64):
            stamp = body.get("created_at")
            out[name] = _Entry(name, body["scope"], body["sha256"],
                               stamp if isinstance(stamp, str) else None)
        else:
            bad.append(repr(name))
    return out, (f"{path}: skipping malformed entries {', '.join(bad)}" if bad else None)


@contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """Hold `<path>.lock` and yield the raw entries read under it (a corrupt file: {})."""
    ensure_dir(path.parent)
    with exclusive(path.with_name(path.name + ".lock")):
        got = read_json(path, validate=_validate, move_corrupt=True)
        yield dict(got["tokens"]) if isinstance(got, dict) else {}


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise TokenError(f"invalid token name {name!r} ({_NAME_HELP})", usage=True)


def add(path: Path, name: str, scope: str, *, now: float | None = None) -> str:
    """Make a token NAME with `scope`; return the token (the only time it is seen).

    TokenError(usage=True) for a bad name or scope, or a name in use."""
    _check_name(name)
    if scope not in _RANK:
        raise TokenError(f"invalid scope {scope!r} (one of {', '.join(SCOPES)})", usage=True)
    token = _PREFIX + secrets.token_urlsafe(32)
    with _locked(path) as entries:
        if name in entries:
            raise TokenError(f"token {name!r} already exists; `batchctl token revoke {name}` "
                             "first", usage=True)
        entries[name] = {"sha256": hash_token(token), "scope": scope,
                         "created_at": iso_now(now)}
        write_record(TOKENS, path, {"tokens": entries}, mode=0o600)
    return token


def revoke(path: Path, name: str) -> dict[str, Any]:
    """Remove token NAME; its {name, scope, created_at}. TokenError if there is none."""
    _check_name(name)
    with _locked(path) as entries:
        if name not in entries:
            raise TokenError(f"no such token: {name}", usage=False)
        body = entries.pop(name)
        write_record(TOKENS, path, {"tokens": entries}, mode=0o600)
    body = body if isinstance(body, dict) else {}
    return {"name": name, "scope": body.get("scope"), "created_at": body.get("created_at")}


def list_tokens(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """[{name, scope, created_at}] by name (never the hashes), and which malformed entries
    were skipped if any. TokenError (not usage) when the whole file is unusable: listing
    nothing as if there were no tokens would hide that every token stopped working."""
    entries, problem = read_tokens(path)
    if problem is not None and isinstance(
            read_json(path, validate=_validate, move_corrupt=False), Corrupt):
        raise TokenError(f"{problem}; the api accepts no token until `batchctl token add` "
                         "moves it aside and writes a new one", usage=False)
    return ([{"name": e.name, "scope": e.scope, "created_at": e.created_at}
             for _, e in sorted(entries.items())], problem)


class TokenTable:
    """The api's view of the tokens file, re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._hashes: list[tuple[bytes, str, str]] = []      # (sha256, scope, name)
        self.problem: str | None = None

    def _current(self) -> None:
        stamp = file_stamp(self.path)
        if stamp == self._stamp and stamp is not None:
            return
        entries, self.problem = read_tokens(self.path)
        self._hashes = [(bytes.fromhex(e.sha256), e.scope, e.name) for e in entries.values()
                        if _is_hex(e.sha256)]
        self._stamp = stamp

    def names(self) -> list[str]:
        """The names of the usable tokens (the file re-read if it changed)."""
        self._current()
        return sorted(name for _, _, name in self._hashes)

    def check(self, token: str) -> tuple[str, str] | None:
        """(scope, token name) of a presented token, or None when it is not a valid one."""
        self._current()
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: tuple[str, str] | None = None
        for stored, scope, name in self._hashes:
            if hmac.compare_digest(digest, stored) and found is None:
                found = (scope, name)
        return found


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
