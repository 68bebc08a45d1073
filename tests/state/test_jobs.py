"""supervisor.state.jobs and _clock: job ids, timestamps, job records, the request bodies."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import AgentConfig, Config
from supervisor.state.jobs import (
    RECORD_FIELDS,
    batch_record,
    cancel_request,
    changes_of,
    job_idle_timeout,
    job_record,
    new_job_id,
    push_branch,
    retry_spec,
    settled_fields,
    submit_request,
    usage_counters,
    usage_of,
    usage_stats,
    valid_job_id,
)
from supervisor.state.layout import Layout

T = 1_800_000_000.25


@pytest.mark.parametrize("job_id, ok", [
    ("a", True), ("A9._-z", True), ("x" * 64, True), ("", False), ("x" * 65, False),
    (".a", False), ("-a", False), ("a/b", False), ("a b", False), ("é", False),
    ("a\n", False), (7, False)])
def test_valid_job_id(job_id: object, ok: bool) -> None:
    """[A-Za-z0-9][A-Za-z0-9._-]{0,63}, nothing else (no path tricks)."""
    assert ok == valid_job_id(job_id)


def test_settled_fields_read_a_result_as_the_scheduler_records_it() -> None:
    """exit 0 and no reason: completed with the result's times; a killed job that was
    cancelled: cancelled by operator; the adaptor's timeout: timed_out naming the limit;
    anything else: failed with the adaptor's reason, the signal or the exit status."""
    ok = settled_fields({"id": "a", "state": "running"},
                        {"exit_code": 0, "reason": None, "finished_at": "T",
                         "started_at": "S", "session_id": "s1"}, 60.0, "NOW")
    assert ("completed", 0, "T", "S", "s1", None) == (
        ok["state"], ok["exit_code"], ok["finished_at"], ok["started_at"], ok["session_id"],
        ok["reason"])
    cancelled = settled_fields({"id": "b", "state": "running", "cancel_requested": True},
                               {"exit_code": None, "signal": 15, "reason": "terminated"},
                               None, "NOW")
    assert ("cancelled", "cancelled by operator", "NOW") == (
        cancelled["state"], cancelled["reason"], cancelled["finished_at"])
    timed = settled_fields({"id": "c"}, {"exit_code": None, "reason": "timed_out"}, 90.0, "N")
    assert ("timed_out", "timed out after 90s") == (timed["state"], timed["reason"])
    assert [("failed", "agent_not_found: x"), ("failed", "killed by signal 9"),
            ("failed", "exit 3")] == [
        (f["state"], f["reason"]) for f in (
            settled_fields({}, {"exit_code": 127, "reason": "agent_not_found: x"}, None, "N"),
            settled_fields({}, {"exit_code": None, "signal": 9}, None, "N"),
            settled_fields({}, {"exit_code": 3}, None, "N"))]

def test_the_agents_verdict_fails_a_job_that_exited_0() -> None:
    """An agent error in the result (reason `agent error: ...`, exit 0): failed, the reason
    naming the agent's message; its usage and session are kept."""
    got = settled_fields({"id": "a", "state": "running"},
                         {"exit_code": 0, "reason": "agent error: Invalid API key",
                          "session_id": "s", "usage": {"input_tokens": 0, "output_tokens": 0,
                                                       "cost_usd": 0, "turns": 1}}, 60.0, "N")
    assert ("failed", "agent error: Invalid API key", 0, "s") \
        == (got["state"], got["reason"], got["exit_code"], got["session_id"])
    assert {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "turns": 1} \
        == got["usage"]


def test_an_idle_stop_is_timed_out_with_reason_idle() -> None:
    """result reason `idle`: the job is timed_out and its reason is exactly `idle`."""
    got = settled_fields({"id": "a"}, {"exit_code": None, "signal": 15, "reason": "idle",
                                       "timed_out": True}, 90.0, "N")
    assert ("timed_out", "idle", None) == (got["state"], got["reason"], got["usage"])


def test_usage_of_normalizes_and_drops_what_is_not_usage() -> None:
    """The four keys, counts as ints and cost as a float; junk is null; nothing: None."""
    assert {"input_tokens": 3, "output_tokens": None, "cost_usd": 0.5, "turns": 2} \
        == usage_of({"input_tokens": 3.0, "output_tokens": "x", "cost_usd": 0.5, "turns": 2,
                     "other": 1})
    assert (None, None, None) == (usage_of(None), usage_of([1]), usage_of({"turns": True}))


def test_usage_counters_per_agent_cost_in_micro_dollars() -> None:
    """A finished job's usage as counter increments: zeros and unknowns are left out."""
    assert {"usage/claude/input_tokens": 1200, "usage/claude/output_tokens": 34,
            "usage/claude/cost_micro_usd": 12346, "usage/claude/turns": 2,
            "usage/claude/jobs": 1} == usage_counters(
        "claude", {"input_tokens": 1200, "output_tokens": 34, "cost_usd": 0.0123456,
                   "turns": 2})
    assert {"usage/g.x/input_tokens": 5, "usage/g.x/jobs": 1} == usage_counters(
        "g.x", {"input_tokens": 5, "output_tokens": 0, "cost_usd": None, "turns": None})
    assert {} == usage_counters("claude", None)


def test_usage_stats_sum_counters_per_agent_and_in_all() -> None:
    """stats' usage: totals and per agent, cost back in dollars; other counters ignored."""
    total, per = usage_stats({"completed": 3, "usage/a/input_tokens": 10,
                              "usage/a/cost_micro_usd": 1_500_000, "usage/a/jobs": 2,
                              "usage/b/input_tokens": 5, "usage/b/turns": 1,
                              "usage/b/jobs": 1})
    assert {"input_tokens": 15, "output_tokens": 0, "cost_usd": 1.5, "turns": 1,
            "jobs": 3} == total
    assert ["a", "b"] == list(per)
    assert {"input_tokens": 5, "output_tokens": 0, "cost_usd": 0.0, "turns": 1,
            "jobs": 1} == per["b"]


def test_idle_timeout_is_the_jobs_else_the_agents_else_none() -> None:
    """--idle-timeout, else agents.NAME.idle_timeout, else no limit."""
    cfg = Config(state_dir=Path("/s"), workspace_dir=Path("/w"),
                 agents={"a": AgentConfig(adaptor="claude", idle_timeout=300.0),
                         "b": AgentConfig(adaptor="claude")})
    assert (5.0, 300.0, None) == (job_idle_timeout(cfg, {"agent": "a", "idle_timeout": 5}),
                                  job_idle_timeout(cfg, {"agent": "a"}),
                                  job_idle_timeout(cfg, {"agent": "b"}))


def test_new_job_ids_are_valid_time_sortable_and_distinct() -> None:
    """A fresh id is a valid id starting with the UTC second; two are never equal."""
    a, b = new_job_id(T), new_job_id(T)
    assert (True, "20270115T080000-", True) == (valid_job_id(a), a[:16], a != b)


def test_job_record_has_every_field_and_shows_pid_only_while_active() -> None:
    """Every contract field is present (session_id, usage, resume_of among them); pid is
    null unless starting or running; the output path is the layout's (derived, not stored
    in the entry)."""
    layout = Layout("/var/lib/batchd")
    running = job_record({"id": "j", "state": "running", "pid": 42, "repos": None}, layout)
    done = job_record({"id": "j", "state": "completed", "pid": 42, "resume_of": "i",
                       "usage": {"turns": 1}}, layout)
    assert (RECORD_FIELDS, 42, [], 0, None, "/var/lib/batchd/jobs/j/output") == (
        tuple(running), running["pid"], running["repos"], running["attempts"], done["pid"],
        done["output_path"])
    assert (None, None, None) == (running["usage"], running["session_id"],
                                  running["resume_of"])
    assert ("i", {"input_tokens": None, "output_tokens": None, "cost_usd": None,
                  "turns": 1}) == (done["resume_of"], done["usage"])


def test_retry_spec_keeps_the_stall_limit_but_not_the_resumed_session() -> None:
    """A retry takes over the job's spec, idle_timeout included; a job that resumed another
    job's session is retried as a fresh session: no resume_of, resume_session or
    workspace (the scheduler gives the retry a workspace of its own)."""
    entry = {"id": "j2", "state": "failed", "agent": "claude", "prompt": "go on",
             "repos": ["app"], "timeout": 600.0, "idle_timeout": 120.0, "priority": 5,
             "retries": 1, "resume_of": "j1", "resume_session": "s-1", "workspace": "/ws/j1",
             "session_id": "s-1", "usage": {"turns": 1}, "attempts": 1, "callback": None}
    assert {"agent": "claude", "prompt": "go on", "repos": ["app"], "timeout": 600.0,
            "idle_timeout": 120.0, "priority": 5, "retries": 1} == retry_spec(entry)


def test_request_bodies() -> None:
    """submit carries the jobs; cancel names its job; both are REQUEST bodies with ids."""
    sub = submit_request([{"id": "j"}], request_id="r1", now=T)
    can = cancel_request("j", now=T)
    assert ("r1", "submit", [{"id": "j"}]) == (sub["id"], sub["kind"], sub["jobs"])
    assert ("cancel", "j", True) == (can["kind"], can["job"], can["id"].startswith("cancel-j-"))


def test_batch_record_counts_states_and_is_done_only_when_all_are_terminal() -> None:
    """{batch, counts, done, jobs}: the shape `batchctl batch` and batch webhooks share."""
    assert {"batch": "B", "counts": {"running": 1, "completed": 1}, "done": False,
            "jobs": ["a", "b"]} == batch_record("B", [("a", "running"), ("b", "completed")])
    assert batch_record("B", [("a", "lost"), ("b", "cancelled")])["done"]


def test_changes_of_keeps_the_contract_keys_and_nulls_what_is_unknown() -> None:
    """Per repository the CHANGES_KEYS, null when missing or of the wrong type; {} for a
    job without repositories; None when nothing was collected."""
    got = changes_of({"app": {"base": "b" * 40, "head": "h" * 40, "files": 3,
                              "insertions": 5, "deletions": 1, "branch": "batchd/j",
                              "commits": 1, "extra": "dropped"},
                      "lib": {"files": "3", "base": ""}, 7: {}, "bad": []})
    assert {"app": {"base": "b" * 40, "head": "h" * 40, "files": 3, "insertions": 5,
                    "deletions": 1, "branch": "batchd/j", "commits": 1},
            "lib": {"base": None, "head": None, "files": None, "insertions": None,
                    "deletions": None, "branch": None, "commits": None}} == got
    assert ({}, None) == (changes_of({}), changes_of(None))


def test_a_results_changes_reach_the_record() -> None:
    """settled_fields carries the result's changes; a result without them: null."""
    result = {"exit_code": 0, "changes": {"app": {"files": 2}}}
    assert 2 == settled_fields({"id": "a"}, result, None, "N")["changes"]["app"]["files"]
    assert None is settled_fields({"id": "a"}, {"exit_code": 0}, None, "N")["changes"]


def test_push_branch_is_the_named_one_or_batchd_slash_id() -> None:
    """`push: true` means batchd/<id>; a string is the branch; nothing: no push."""
    assert ["batchd/j1", "feat", None, None] == [
        push_branch({"id": "j1", **extra}) for extra in (
            {"push": True}, {"push": "feat"}, {"push": False}, {})]
    record = job_record({"id": "j1", "state": "queued", "push": True}, Layout("/s"))
    assert ("batchd/j1", None) == (record["push"], record["changes"])


def test_a_retry_keeps_the_push() -> None:
    """A retried job pushes as the job it retries asked (its own default branch)."""
    assert "feat" == retry_spec({"id": "j", "agent": "shell", "prompt": "p",
                                 "push": "feat"})["push"]
