"""Named one-shot timers on a heap: what batchd's loop sleeps until."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Timers"]


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    key: str = field(compare=False)


class Timers:
    """A heap of named one-shot timers; setting a name again replaces its pending timer."""

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._live: dict[str, int] = {}
        self._seq = itertools.count()

    def set(self, key: str, when: float) -> None:
        seq = next(self._seq)
        self._live[key] = seq
        heapq.heappush(self._heap, _Timer(when, seq, key))

    def cancel(self, key: str) -> None:
        self._live.pop(key, None)

    def pending(self, key: str) -> bool:
        return key in self._live

    def next_due(self) -> float | None:
        while self._heap and self._live.get(self._heap[0].key) != self._heap[0].seq:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def pop_due(self, now: float) -> Iterator[str]:
        """The keys of timers due at `now`, earliest first (each fires once)."""
        while True:
            due = self.next_due()
            if due is None or due > now:
                return
            timer = heapq.heappop(self._heap)
            del self._live[timer.key]
            yield timer.key
