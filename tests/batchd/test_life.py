"""batchd's own life table (supervisor.batchd.life): complete, and the rows that matter."""

from __future__ import annotations

import pytest

from supervisor.batchd.life import TABLE, Do, Event, Life, step


def test_every_pair_is_a_row_or_ignored_on_purpose() -> None:
    """Completeness: each (life, event) is in the table or ignored, never both."""
    pairs = {(s, e) for s in Life for e in Event}
    assert (set(), pairs) == (set(TABLE.rows) & TABLE.ignored, set(TABLE.rows) | TABLE.ignored)


@pytest.mark.parametrize(("state", "event", "expected"), [
    (Life.STARTING, Event.RECOVERED, (Life.RUNNING, (Do.FINISH_STARTUP, Do.REPLAY_RELOAD))),
    (Life.STARTING, Event.RELOAD, (Life.STARTING, (Do.DEFER_RELOAD,))),
    (Life.STARTING, Event.SHUTDOWN, (Life.STOPPING, (Do.ABORT_STARTUP, Do.BEGIN_SHUTDOWN))),
    (Life.RUNNING, Event.RELOAD, (Life.RELOADING, (Do.APPLY_RELOAD,))),
    (Life.RELOADING, Event.RELOAD, (Life.RELOADING, (Do.DEFER_RELOAD,))),
    (Life.RELOADING, Event.RELOADED, (Life.RUNNING, (Do.REPLAY_RELOAD,))),
    (Life.RUNNING, Event.CRITICAL_FATAL, (Life.STOPPING, (Do.BEGIN_SHUTDOWN,))),
    (Life.STOPPING, Event.SHUTDOWN, (Life.STOPPING, ())),
    (Life.STOPPING, Event.ALL_STOPPED, (Life.STOPPED, (Do.LEAVE,))),
    (Life.STOPPED, Event.RELOAD, (Life.STOPPED, ())),
])
def test_rows(state: Life, event: Event, expected: tuple[Life, tuple[Do, ...]]) -> None:
    """A reload waits while batchd starts or reloads; once stopping, only the last
    worker going down matters."""
    assert expected == step(state, event)
