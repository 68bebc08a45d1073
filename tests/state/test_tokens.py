"""API tokens: made once and shown once, stored as hashes (0600), revoked at once, checked
in constant time whatever the table holds."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from supervisor.state.tokens import (
    SCOPES,
    TokenError,
    TokenTable,
    add,
    allows,
    hash_token,
    list_tokens,
    read_tokens,
    revoke,
)


def test_add_returns_a_token_and_stores_only_its_hash(tmp_path: Path) -> None:
    """32 random bytes (43 url-safe characters after the prefix), never written: the file
    holds its SHA-256, scope and time, with mode 0600."""
    path = tmp_path / "api" / "tokens"
    token = add(path, "ci", "submit", now=1_800_000_000.0)
    assert token.startswith("bdt_") and 43 == len(token) - len("bdt_")
    raw = path.read_text()
    assert token not in raw
    entry = json.loads(raw)["tokens"]["ci"]
    assert (hash_token(token), "submit", "2027-01-15T08:00:00.000Z") == (
        entry["sha256"], entry["scope"], entry["created_at"])
    assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)


def test_two_tokens_differ_and_names_are_unique(tmp_path: Path) -> None:
    """A second add of a name is refused (usage error); tokens are random."""
    path = tmp_path / "tokens"
    a, b = add(path, "a", "read"), add(path, "b", "read")
    assert a != b
    with pytest.raises(TokenError) as err:
        add(path, "a", "admin")
    assert err.value.usage and "already exists" in str(err.value)


@pytest.mark.parametrize(("name", "scope", "why"), [
    ("../x", "read", "invalid token name"), ("", "read", "invalid token name"),
    ("ok", "root", "invalid scope"),
])
def test_bad_names_and_scopes_are_refused_and_write_nothing(tmp_path: Path, name: str,
                                                            scope: str, why: str) -> None:
    """Usage errors, and no file appears."""
    with pytest.raises(TokenError) as err:
        add(tmp_path / "tokens", name, scope)
    assert err.value.usage and why in str(err.value)
    assert not (tmp_path / "tokens").exists()


def test_revoke_removes_the_entry_and_unknown_is_not_usage(tmp_path: Path) -> None:
    """revoke: the entry goes; an unknown name is a failure (exit 1), not a usage error."""
    path = tmp_path / "tokens"
    add(path, "a", "read")
    assert ("a", "read") == tuple(revoke(path, "a").values())[:2]
    assert {} == read_tokens(path)[0]
    with pytest.raises(TokenError) as err:
        revoke(path, "a")
    assert not err.value.usage


def test_list_shows_names_and_scopes_never_hashes(tmp_path: Path) -> None:
    """list: by name, {name, scope, created_at} only."""
    path = tmp_path / "tokens"
    add(path, "b", "admin")
    add(path, "a", "read")
    records, problem = list_tokens(path)
    assert (["a", "b"], None) == ([r["name"] for r in records], problem)
    assert all(set(r) == {"name", "scope", "created_at"} for r in records)


def test_scopes_are_ordered() -> None:
    """read < submit < admin."""
    assert ("read", "submit", "admin") == SCOPES
    assert [True, True, False] == [allows("submit", s) for s in ("read", "submit", "admin")]
    assert allows("admin", "admin") and not allows("read", "submit")


def test_the_table_checks_tokens_and_follows_the_file(tmp_path: Path) -> None:
    """check(): (scope, name) for a valid token, None otherwise; a revoke or a new token is
    seen at the very next check (the file is stat'ed each time)."""
    path = tmp_path / "tokens"
    table = TokenTable(path)
    assert table.check("anything") is None
    t1 = add(path, "one", "read")
    assert ("read", "one") == table.check(t1)
    t2 = add(path, "two", "admin")
    assert ("admin", "two") == table.check(t2)
    revoke(path, "one")
    assert table.check(t1) is None
    assert table.check(t1[:-1]) is None and table.check("") is None


def test_a_corrupt_file_holds_no_token_and_says_why(tmp_path: Path) -> None:
    """Readers never move the file; they refuse every token and keep the reason. The
    writer (batchctl) moves it aside at its next write."""
    path = tmp_path / "tokens"
    path.write_text("{torn")
    table = TokenTable(path)
    assert table.check("x") is None
    assert table.problem is not None and "unusable" in table.problem
    token = add(path, "fresh", "read")
    assert ("read", "fresh") == table.check(token)
    assert any(".corrupted." in n for n in os.listdir(tmp_path))


def test_concurrent_adds_all_land(tmp_path: Path) -> None:
    """The flock serializes writers: twenty threads adding at once lose no entry."""
    path = tmp_path / "tokens"
    threads = [threading.Thread(target=add, args=(path, f"t{i}", "read")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 20 == len(read_tokens(path)[0])


def test_list_of_an_unusable_tokens_file_fails_and_moves_nothing(tmp_path: Path) -> None:
    """A tokens file that is not JSON: `list` fails (exit 1, not usage) naming the file,
    instead of listing nothing as if no token existed; the file stays where it is (only
    its writer, `token add`, moves it aside)."""
    path = tmp_path / "tokens"
    path.write_text("{not json")
    with pytest.raises(TokenError) as err:
        list_tokens(path)
    assert not err.value.usage
    assert str(err.value).startswith(f"{path} is unusable (")
    assert ["tokens"] == sorted(p.name for p in tmp_path.iterdir())
