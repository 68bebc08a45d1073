"""State machines as tables: (state, event) -> Row(next state, actions), the one idiom of batchd.

Every machine in batchd (a worker process, batchd's own life, a job, a webhook delivery,
an adaptor's stop) is a `Table` of rows written out in full, as s6-supervise.c does, never
nested ifs. A row names the next state (None: stay) and the actions in the order to carry
them out; an action is an enum member that the machine's owner maps to one function (its
executor table). Pairs not in the table are either listed as ignored (they mean nothing
there, for a stated reason) or are a programming error (`Unexpected`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Row", "Table", "Unexpected"]

S = TypeVar("S")
E = TypeVar("E")
A = TypeVar("A")


class Unexpected(LookupError):
    """An event a machine has no row for and does not ignore: a bug, never an input error."""


@dataclass(frozen=True)
class Row(Generic[S, A]):
    """One cell: the next state (None keeps the current one) and the actions, in order."""

    next: S | None
    actions: tuple[A, ...] = ()


class Table(Generic[S, E, A]):
    """The rows of one machine, and the pairs it ignores on purpose."""

    def __init__(self, rows: Mapping[tuple[S, E], Row[S, A]],
                 ignored: Iterable[tuple[S, E]] = ()) -> None:
        self.rows: dict[tuple[S, E], Row[S, A]] = dict(rows)
        self.ignored: frozenset[tuple[S, E]] = frozenset(ignored)
        both = self.ignored & self.rows.keys()
        if both:
            raise ValueError(f"pairs both in the table and ignored: {sorted(map(str, both))}")

    def get(self, state: S, event: E) -> Row[S, A] | None:
        """The row for (state, event), or None when the pair is ignored or unlisted."""
        return self.rows.get((state, event))

    def lookup(self, state: S, event: E) -> Row[S, A] | None:
        """The row, None for an ignored pair; `Unexpected` for a pair that is neither."""
        row = self.rows.get((state, event))
        if row is None and (state, event) not in self.ignored:
            raise Unexpected(f"no row for state {state!s} and event {event!s}")
        return row

    def next_state(self, state: S, event: E) -> S:
        """The state after `event` (unchanged for an ignored or unlisted pair)."""
        row = self.rows.get((state, event))
        return state if row is None or row.next is None else row.next
