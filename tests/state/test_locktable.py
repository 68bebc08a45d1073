"""state.locktable: FIFO queues, all-or-nothing grants, idempotence, the record."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.state.locktable import (
    Lock,
    Table,
    Want,
    acquire,
    acquire_request,
    blocked,
    drop,
    exclusive_for,
    from_parts,
    from_record,
    grant,
    granted_hint,
    held_record,
    is_lock_hint,
    next_hint,
    next_in_line,
    page_record,
    release,
    release_request,
    to_record,
    unavailable,
    wants_from_record,
)

T0, T1 = "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z"


def want(*repos: str, seq: int, exclusive: bool = False) -> Want:
    return Want(tuple(repos), exclusive, seq, T0)


def table_with(*asks: tuple[str, tuple[str, ...]]) -> Table:
    """A table where each (job, repos) asked in the order given (seq 1, 2, ...)."""
    t = Table()
    for seq, (job, repos) in enumerate(asks, start=1):
        assert acquire(t, job, want(*repos, seq=seq))
    return t


def test_first_come_first_granted_the_rest_wait_in_order() -> None:
    """Three jobs on one repo: the first gets it, the others wait in request order."""
    t = table_with(("a", ("app",)), ("b", ("app",)), ("c", ("app",)))
    assert ["a"] == grant(t, T0)
    assert ({"app": Lock("a", T0)}, {"app": ["b", "c"]}) == (t.held, t.waiting)
    assert [] == grant(t, T1)


def test_release_passes_the_lock_to_the_next_in_line() -> None:
    """Each release grants the next job in FIFO order, with the time of the grant."""
    t = table_with(("a", ("app",)), ("b", ("app",)), ("c", ("app",)))
    grant(t, T0)
    order = []
    for job in ("a", "b", "c"):
        assert release(t, job)
        order += grant(t, T1)
    assert (["b", "c"], {}, {}) == (order, t.held, t.waiting)


def test_all_or_nothing_with_two_repos() -> None:
    """A job needing app and lib takes neither while lib is held; then both at once."""
    t = table_with(("x", ("lib",)), ("j", ("app", "lib")))
    assert ["x"] == grant(t, T0)
    assert ("app" not in t.held, {"app": ["j"], "lib": ["j"]}) == (True, t.waiting)
    release(t, "x")
    assert ["j"] == grant(t, T1)
    assert {"app": Lock("j", T1), "lib": Lock("j", T1)} == t.held


def test_no_overtaking_a_job_waiting_for_more_repos() -> None:
    """b (lib only) does not pass j (app+lib) in lib's queue, although lib is free."""
    t = table_with(("a", ("app",)), ("j", ("app", "lib")), ("b", ("lib",)))
    assert ["a"] == grant(t, T0)
    assert ({"app": ["j"], "lib": ["j", "b"]}, ["app"]) == (t.waiting, list(t.held))
    release(t, "a")
    assert ["j"] == grant(t, T1)
    release(t, "j")
    assert ["b"] == grant(t, T1)


def test_disjoint_jobs_are_granted_together() -> None:
    """Jobs on different repositories do not wait for one another."""
    t = table_with(("a", ("app",)), ("b", ("lib",)), ("c", ("app", "doc")))
    assert ["a", "b"] == grant(t, T0)
    assert {"app": ["c"], "doc": ["c"]} == t.waiting


def test_a_late_request_takes_its_place_by_seq() -> None:
    """An acquire seen after a younger one is queued before it (its seq is lower)."""
    t = Table()
    acquire(t, "young", want("app", seq=20))
    acquire(t, "old", want("app", seq=10))
    acquire(t, "older", want("app", seq=5))
    assert ["older", "old", "young"] == t.waiting["app"]
    assert ["older"] == grant(t, T0)


def test_acquire_is_idempotent_by_job() -> None:
    """A second acquire of a waiting or holding job changes nothing (not even its place)."""
    t = table_with(("a", ("app",)), ("b", ("app",)))
    before = to_record(t)
    assert not acquire(t, "b", want("app", seq=0))
    assert before == to_record(t)
    grant(t, T0)
    assert not acquire(t, "a", want("app", "lib", seq=99))
    assert ({"app": Lock("a", T0)}, {"app": ["b"]}) == (t.held, t.waiting)


def test_release_is_idempotent_and_covers_waiting_jobs() -> None:
    """Releasing a waiting job takes it out of every queue; again, or unknown: no change."""
    t = table_with(("a", ("app",)), ("j", ("app", "lib")))
    grant(t, T0)
    assert release(t, "j")
    assert ({}, {}) == (t.waiting, t.wants)
    assert not release(t, "j")
    assert not release(t, "nobody")
    assert {"app": Lock("a", T0)} == t.held


def test_drop_of_terminal_jobs_frees_their_locks_and_places() -> None:
    """drop() releases the jobs named (held or waiting) and says which were there."""
    t = table_with(("a", ("app",)), ("b", ("app",)), ("c", ("app",)))
    grant(t, T0)
    assert ["a", "b"] == drop(t, ["a", "b", "ghost"])
    assert ["c"] == grant(t, T1)


def test_an_unavailable_repo_is_never_granted() -> None:
    """A job needing a repository that no longer exists waits (and blocks nobody else's
    other repositories beyond its queue places); unavailable() names it."""
    t = table_with(("j", ("gone", "app")), ("b", ("lib",)))
    assert ["b"] == grant(t, T0, lambda repo: repo != "gone")
    assert ["gone"] == unavailable(t, {"app", "lib"})
    assert [] == unavailable(t, {"app", "lib", "gone"})


def test_exclusive_is_carried_into_the_lock() -> None:
    """The acquire's exclusivity is what the held lock records."""
    t = Table()
    acquire(t, "a", want("app", seq=1, exclusive=True))
    grant(t, T0)
    assert Lock("a", T0, True) == t.held["app"]


def test_record_round_trip() -> None:
    """to_record -> from_record gives the same table back (held order, queues, wants)."""
    t = table_with(("a", ("app",)), ("j", ("app", "lib")), ("b", ("lib",)))
    grant(t, T0)
    rec = to_record(t)
    assert (["a"], ["blocked", "held", "wants", "worker"]) == (
        [h["job"] for h in rec["held"]], sorted(rec))
    back = from_record(rec)
    assert isinstance(back, Table)
    assert (t.held, t.waiting, t.wants) == (back.held, back.waiting, back.wants)


def test_held_record_and_pages_make_the_table() -> None:
    """state.json's body (held, blocked) carries no wants; the pages carry them; from_parts
    puts them together: queues by seq whatever the page, a job both holding and waiting
    holds, a job on two pages counts once."""
    t = table_with(("a", ("app",)), ("j", ("app", "lib")), ("b", ("lib",)))
    grant(t, T0)
    rec = held_record(t, blocked(t, {"app"}))
    assert (["blocked", "held", "worker"], {"lib": ["j", "b"]}) == (sorted(rec), rec["blocked"])
    first = wants_from_record(page_record({"j": t.wants["j"]}))
    second = wants_from_record(page_record({"b": t.wants["b"], "j": t.wants["j"]}))
    stale = wants_from_record(page_record({"a": want("app", seq=0)}))
    assert isinstance(first, dict) and isinstance(second, dict) and isinstance(stale, dict)
    back = from_parts(rec, [second, first, stale])
    assert isinstance(back, Table)
    assert (t.held, t.waiting, t.wants) == (back.held, back.waiting, back.wants)


def test_a_record_of_this_version_has_no_wants() -> None:
    """from_record of a state.json of this version: what is held, nothing waiting."""
    t = table_with(("a", ("app",)), ("b", ("app",)))
    grant(t, T0)
    back = from_record(held_record(t))
    assert isinstance(back, Table)
    assert (t.held, {}, {}) == (back.held, back.waiting, back.wants)


@pytest.mark.parametrize(("patch", "problem"), [
    ({"held": {}}, "'held' must be a list"),
    ({"held": [{"repo": "a"}]}, "held[0] must be an object with string repo, job and since"),
    ({"held": [{"repo": "a", "job": "j", "since": T0}] * 2}, "repository 'a' is held twice"),
    ({"wants": {"../x": {"repos": ["a"], "exclusive": False, "seq": 1}}},
     "'../x' is not a job id"),
    ({"wants": {"j1": {"repos": [], "exclusive": False, "seq": 1}}},
     "repos must be a non-empty list"),
    ({"wants": {"j1": {"repos": ["a"], "exclusive": "yes", "seq": 1}}},
     "exclusive must be true or false"),
    ({"held": [{"repo": "a", "job": "j1", "since": T0}],
      "wants": {"j1": {"repos": ["b"], "exclusive": False, "seq": 1}}},
     "job 'j1' both holds locks and waits"),
])
def test_bad_records_say_what_is_wrong(patch: dict[str, Any], problem: str) -> None:
    """from_record refuses an inconsistent or mis-shaped table with a sentence."""
    rec: dict[str, Any] = {"worker": "locks", "held": [], "waiting": {}, **patch}
    got = from_record(rec)
    assert isinstance(got, str)
    assert problem in got


def test_a_first_version_record_reads_as_a_table() -> None:
    """A record of the first version (with `waiting`, without `wants`: nothing waiting)
    reads fine; the derivable keys it carried are ignored."""
    got = from_record({"worker": "locks", "held": [{"repo": "a", "job": "j", "since": T0}],
                       "waiting": {}})
    assert isinstance(got, Table)
    assert {"a": Lock("j", T0, False)} == got.held


def test_exclusive_for_prefers_the_recorded_decision() -> None:
    """lock_exclusive wins; else the job's flag or any of its repositories' flag."""
    class Repo:
        def __init__(self, exclusive: bool) -> None:
            self.exclusive = exclusive
    repos = {"app": Repo(True), "lib": Repo(False)}
    assert exclusive_for({"repos": ["lib"], "lock_exclusive": True}, repos)
    assert not exclusive_for({"repos": ["app"], "lock_exclusive": False}, repos)
    assert exclusive_for({"repos": ["lib", "app"]}, repos)
    assert exclusive_for({"repos": ["lib"], "exclusive": True}, repos)
    assert not exclusive_for({"repos": ["lib", "gone"]}, repos)


def test_request_bodies_have_deterministic_ids() -> None:
    """acquire-<job>, release-<job>, granted-<job>: a replay rewrites the same file."""
    assert ("acquire-j", "acquire", ["app"], True, 7) == tuple(
        acquire_request("j", ["app"], exclusive=True, seq=7, created_at=T0)[k]
        for k in ("id", "kind", "repos", "exclusive", "seq"))
    assert ("release-j", "release", "j") == tuple(
        release_request("j", created_at=T0)[k] for k in ("id", "kind", "job"))
    assert ("granted-j", "lock_granted", "j") == tuple(
        granted_hint("j", created_at=T0)[k] for k in ("id", "kind", "job"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acq", "rel"]), st.integers(0, 7),
                          st.sets(st.sampled_from(["r1", "r2", "r3"]), min_size=1)),
                max_size=40))
def test_invariants_under_any_sequence(ops: list[tuple[str, int, set[str]]]) -> None:
    """Whatever acquires and releases happen: a repo has one holder, a holder has all its
    repos, nobody waits for a repo it holds, no waiting job is grantable after grant(),
    and within every queue the order is the seq order (so: FIFO, no deadlock)."""
    t = Table()
    seq = 0
    for op, n, repos in ops:
        job = f"j{n}"
        if op == "acq":
            seq += 1
            acquire(t, job, want(*sorted(repos), seq=seq))
        else:
            release(t, job)
        grant(t, T0)
        rec = from_record(to_record(t))
        assert isinstance(rec, Table)
        for queue in t.waiting.values():
            assert [t.wants[j].seq for j in queue] == sorted(t.wants[j].seq for j in queue)
        for job_id, w in t.wants.items():
            assert not all(r not in t.held and t.waiting[r][0] == job_id for r in w.repos)
        if t.wants:   # the oldest waiting job is first in all its queues: it only waits on locks
            oldest = min(t.wants, key=lambda j: t.wants[j].seq)
            assert all(t.waiting[r][0] == oldest for r in t.wants[oldest].repos)
            assert any(r in t.held for r in t.wants[oldest].repos)


def test_next_in_line_is_the_head_of_a_queue_behind_a_whole_run_holder() -> None:
    """Only a job first in line behind an exclusive holder is next in line (its wait is
    a run); not one behind a holder that only clones, nor the second in a queue."""
    t = Table()
    for job, repo, seq in (("a", "app", 1), ("b", "app", 2), ("c", "app", 3),
                           ("n", "lib", 4), ("m", "lib", 5)):
        acquire(t, job, want(repo, seq=seq, exclusive=repo == "app"))
    grant(t, T0)
    assert ({"a", "n"}, {"b"}) == (set(t.held[r].job for r in t.held), next_in_line(t))


def test_the_lock_hints_are_known_by_their_names() -> None:
    """granted- and next- files are the locks worker's hints (the scheduler drops a torn
    one instead of quarantining it); nothing else in its inbox is taken for one."""
    names = [f"{granted_hint('j', created_at=T0)['id']}.json",
             f"{next_hint('j', created_at=T0)['id']}.json", "submit-1.json",
             "cancel-next-j.json", "cancel-granted-j.json"]
    assert [True, True, False, False, False] == [is_lock_hint(n) for n in names]
