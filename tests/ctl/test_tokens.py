"""`batchctl token add/list/revoke`: the token printed once, only hashes on disk, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.ctl import main
from supervisor.state.tokens import hash_token


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "batchd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n"
                    f"api: {{tokens_file: {tmp_path / 'secrets' / 'tokens'}}}\n")
    return path


def test_add_prints_the_token_once_and_stores_its_hash(cfg: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """stdout is the token alone; api.tokens_file holds its hash, never the token."""
    assert 0 == main(["-c", str(cfg), "token", "add", "ci", "--scope", "submit"])
    token = capsys.readouterr().out.strip()
    stored = (tmp_path / "secrets" / "tokens").read_text()
    assert token not in stored and hash_token(token) in stored


def test_list_and_revoke(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """list --json: name, scope, created_at; revoke: gone; revoke again: exit 1."""
    main(["-c", str(cfg), "token", "add", "a", "--scope", "read"])
    capsys.readouterr()
    assert 0 == main(["-c", str(cfg), "token", "list", "--json"])
    [rec] = json.loads(capsys.readouterr().out)
    assert ("a", "read") == (rec["name"], rec["scope"])
    assert 0 == main(["-c", str(cfg), "token", "revoke", "a"])
    assert 1 == main(["-c", str(cfg), "token", "revoke", "a"])
    assert "no such token: a" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["token", "add", "x", "--scope", "root"],
                                  ["token", "add", "x"], ["token", "add", "bad/name",
                                                          "--scope", "read"], ["token"]])
def test_usage_errors_are_exit_2(cfg: Path, argv: list[str]) -> None:
    """A bad scope, a missing scope, a bad name, no action: exit 2."""
    assert 2 == main(["-c", str(cfg), *argv])


def test_a_name_in_use_is_exit_2(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """add of a name that exists: exit 2, the first token still valid."""
    main(["-c", str(cfg), "token", "add", "a", "--scope", "read"])
    assert 2 == main(["-c", str(cfg), "token", "add", "a", "--scope", "admin"])
    assert "already exists" in capsys.readouterr().err


