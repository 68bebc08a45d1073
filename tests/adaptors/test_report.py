"""What an agent says about its run (adaptors._report): first lines, usage objects, and the
share of a session's cumulative figure that one resumed run used."""

from __future__ import annotations

from adaptors._report import first_line, number, since, usage


def test_first_line_strips_ansi_blank_lines_and_cuts() -> None:
    """ANSI colours go, leading blank lines are skipped, long lines are cut with an ellipsis."""
    assert "Error: Session not found" == first_line("\n\x1b[91m\x1b[1mError: \x1b[0mSession "
                                                    "not found\nmore")
    assert "abcd…" == first_line("abcdefgh", limit=5)
    assert (None, None) == (first_line("  \n\n"), first_line(None))


def test_number_accepts_only_non_negative_numbers() -> None:
    """Booleans, strings, negatives are not counts."""
    assert (3, 0.5, None, None, None) == (number(3), number(0.5), number(True), number("3"),
                                          number(-1))


def test_usage_keeps_the_four_keys_and_drops_an_empty_one() -> None:
    """Counts become ints, cost a float; all unknown: None."""
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.25, "turns": None} \
        == usage(11.0, 7, 0.25, "x")
    assert None is usage()


def test_since_subtracts_the_resumed_jobs_total() -> None:
    """A first run is its total; a resumed run is the total minus the base; an unknown or
    larger base is unknown (None), never a double count."""
    assert 22 == since(22, None, "input_tokens", resumed=False)
    assert 11 == since(22, {"input_tokens": 11}, "input_tokens", resumed=True)
    assert 0.2 == since(0.5, {"cost_usd": 0.3}, "cost_usd", resumed=True)
    assert None is since(22, None, "input_tokens", resumed=True)
    assert None is since(22, {"input_tokens": 40}, "input_tokens", resumed=True)
    assert None is since(None, {"input_tokens": 1}, "input_tokens", resumed=True)
