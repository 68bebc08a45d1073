"""Rendering helpers the structured adaptors share (adaptors._render)."""

from __future__ import annotations

from adaptors._render import block, one_line, tool_call


def test_one_line_collapses_and_truncates() -> None:
    """Whitespace runs collapse; long text is cut with an ellipsis."""
    assert "a b c" == one_line("a\n  b\tc")
    assert "abcd…" == one_line("abcdefgh", limit=5)


def test_tool_call_picks_the_meaningful_argument() -> None:
    """command/file_path/... is shown; otherwise compact JSON; nothing: just the name."""
    assert "[tool] Read: /a.py\n" == tool_call("Read", {"file_path": "/a.py", "limit": 5})
    assert '[tool] X: {"n": 1}\n' == tool_call("X", {"n": 1})
    assert "[tool] Y\n" == tool_call("Y", {})


def test_block_indents_and_notes_truncation() -> None:
    """Continuation lines are indented; lines beyond max_lines are counted."""
    assert "[r] 1\n  2\n  … (1 more lines)\n" == block("[r]", "1\n2\n3", max_lines=2)
