"""The job record's outside shape, job ids, and the requests that carry jobs to the scheduler.

A job travels: batchctl validates it, drops a `submit` REQUEST into `scheduler/inbox/`
(one file per `submit`, all jobs of a `--from` file in one, so it is all or nothing), the
scheduler enqueues it into its WAL (idempotent by job id) and only then removes the file.
`job_record` turns what the queue holds into the record of CONTRACT.md, every key present.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from supervisor.config import Config
from supervisor.state.clock import iso_now
from supervisor.state.layout import Layout
from supervisor.state.queue import TERMINAL_STATES, USAGE_KINDS, usage_counter, usage_counter_parts

__all__ = [
    "CHANGES_KEYS",
    "IDLE_REASON",
    "JOB_ID_RE",
    "RECORD_FIELDS",
    "RETRY_KEYS",
    "SUBMIT_KEYS",
    "USAGE_KEYS",
    "batch_record",
    "cancel_request",
    "changes_of",
    "job_idle_timeout",
    "job_record",
    "job_timeout",
    "new_job_id",
    "push_branch",
    "result_reason",
    "result_state",
    "retry_spec",
    "settled_fields",
    "submit_request",
    "usage_counters",
    "usage_of",
    "usage_stats",
    "valid_job_id",
]

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: The keys of a job record (`status JOB --json`, `jobs --json`, webhook bodies), in order.
RECORD_FIELDS: tuple[str, ...] = (
    "id", "state", "agent", "repos", "batch", "created_at", "started_at", "finished_at",
    "exit_code", "reason", "attempts", "pid", "workspace", "output_path",
    "callback", "timeout", "exclusive", "idle_timeout", "session_id", "usage", "resume_of",
    "after", "after_any", "priority", "not_before", "labels", "retry_of", "retries",
    "push", "changes",
)

#: Keys a submission (a `--from` JSONL line, or the flags of `submit`) may carry.
SUBMIT_KEYS: frozenset[str] = frozenset(
    {"agent", "prompt", "repos", "callback", "timeout", "batch", "id", "exclusive", "resume",
     "idle_timeout", "after", "after_any", "priority", "not_before", "labels", "retries",
     "push"})

#: The keys of a job's `usage` (CONTRACT.md), each null when the agent does not report it.
USAGE_KEYS: tuple[str, ...] = ("input_tokens", "output_tokens", "cost_usd", "turns")

#: The keys of one repository's entry in a job's `changes` (CONTRACT.md, "Results"), and
#: `commits` (how many commits the job added on top of `base`).
CHANGES_KEYS: tuple[str, ...] = ("base", "head", "files", "insertions", "deletions", "branch",
                                 "commits")


def batch_record(batch: str, states: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The contract's batch record, {batch, counts, done, jobs}, from (job id, state)
    pairs in submission order (`batchctl batch`, and the body of a batch webhook)."""
    pairs = list(states)
    counts: dict[str, int] = {}
    for _, state in pairs:
        counts[state] = counts.get(state, 0) + 1
    return {"batch": batch, "counts": counts,
            "done": all(state in TERMINAL_STATES for _, state in pairs),
            "jobs": [job_id for job_id, _ in pairs]}


def valid_job_id(job_id: object) -> bool:
    """True for ids matching [A-Za-z0-9][A-Za-z0-9._-]{0,63} (no path tricks possible)."""
    return isinstance(job_id, str) and JOB_ID_RE.fullmatch(job_id) is not None


def new_job_id(now: float | None = None) -> str:
    """A fresh, time-sortable job id: 20261128T114502-3fa9c1d2."""
    t = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return f"{t.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"


def submit_request(jobs: list[dict[str, Any]], *, request_id: str | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """The REQUEST body that hands `jobs` (already validated, each with an id) to the scheduler."""
    return {
        "id": request_id or f"submit-{secrets.token_hex(8)}",
        "kind": "submit",
        "created_at": iso_now(now),
        "jobs": jobs,
    }


def cancel_request(job_id: str, *, now: float | None = None) -> dict[str, Any]:
    """The REQUEST body asking the scheduler to cancel `job_id`."""
    return {
        "id": f"cancel-{job_id}-{secrets.token_hex(4)}",
        "kind": "cancel",
        "job": job_id,
        "created_at": iso_now(now),
    }


def job_record(entry: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """The contract's job record from a queue entry: every field present, null when unknown.

    `pid` is shown only while the job is starting or running; `output_path` is where the
    layout puts the job's output (derived, never stored).
    """
    rec: dict[str, Any] = {k: entry.get(k) for k in RECORD_FIELDS}
    rec["output_path"] = f"{layout.jobs_root_text}/{entry['id']}/output"
    rec["repos"] = list(entry.get("repos") or [])
    rec["attempts"] = int(entry.get("attempts") or 0)
    rec["exclusive"] = bool(entry.get("exclusive") or False)
    rec["usage"] = usage_of(entry.get("usage"))
    rec["after"] = list(entry.get("after") or [])
    rec["after_any"] = list(entry.get("after_any") or [])
    rec["priority"] = int(entry.get("priority") or 0)
    rec["labels"] = dict(entry.get("labels") or {})
    rec["retries"] = int(entry.get("retries") or 0)
    rec["push"] = push_branch(entry)
    rec["changes"] = changes_of(entry.get("changes"))
    if rec["state"] not in ("starting", "running"):
        rec["pid"] = None
    return rec


def push_branch(entry: Mapping[str, Any]) -> str | None:
    """The branch a job pushes its changes to: its own (`--push BRANCH`), `batchd/<id>` for
    a bare `--push` (stored as true), None when it does not push."""
    push = entry.get("push")
    if isinstance(push, str) and push:
        return push
    if push is True:
        return f"batchd/{entry['id']}"
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def changes_of(value: object) -> dict[str, dict[str, Any]] | None:
    """A job's `changes` as records show it: per repository name, the CHANGES_KEYS (each
    null when not known); {} for a finished job without repositories; None when nothing
    was collected (the job has not ended, or ended without its adaptor's result)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, repo in value.items():
        if not isinstance(name, str) or not isinstance(repo, dict):
            continue
        out[name] = {"base": _text(repo.get("base")), "head": _text(repo.get("head")),
                     "files": _count(repo.get("files")),
                     "insertions": _count(repo.get("insertions")),
                     "deletions": _count(repo.get("deletions")),
                     "branch": _text(repo.get("branch")), "commits": _count(repo.get("commits"))}
    return out


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def usage_of(value: object) -> dict[str, Any] | None:
    """A usage object as records show it: the four keys (an int, a float for cost_usd, or
    null each), or None when there is none (not a JSON object, or nothing reported)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {k: _count(value.get(k)) for k in ("input_tokens", "output_tokens",
                                                              "turns")}
    cost = value.get("cost_usd")
    out["cost_usd"] = (float(cost) if isinstance(cost, int | float)
                       and not isinstance(cost, bool) and cost >= 0 else None)
    if all(v is None for v in out.values()):
        return None
    return {k: out[k] for k in USAGE_KEYS}


def usage_counters(agent: str, usage: object) -> dict[str, int]:
    """The counter increments (state.queue usage counters, per agent) a finished job's
    usage adds to `stats`: tokens and turns as they are, cost in micro-dollars (counters
    are integers), and `jobs`: 1 (jobs that reported usage). Empty without usage."""
    got = usage_of(usage)
    if got is None:
        return {}
    amounts = {"input_tokens": got["input_tokens"], "output_tokens": got["output_tokens"],
               "turns": got["turns"], "jobs": 1,
               "cost_micro_usd": None if got["cost_usd"] is None
               else round(got["cost_usd"] * 1_000_000)}
    return {usage_counter(agent, kind): n for kind, n in amounts.items()
            if n is not None and n > 0}


def usage_stats(counters: Mapping[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the usage totals, the usage per agent) of `stats`, from the queue's counters:
    {input_tokens, output_tokens, cost_usd, turns, jobs}, cost back in dollars."""
    per: dict[str, dict[str, int]] = {}
    for name, n in counters.items():
        parts = usage_counter_parts(name)
        if parts is not None:
            per.setdefault(parts[0], dict.fromkeys(USAGE_KINDS, 0))[parts[1]] += int(n)

    def shown(sums: Mapping[str, int]) -> dict[str, Any]:
        return {"input_tokens": sums["input_tokens"], "output_tokens": sums["output_tokens"],
                "cost_usd": round(sums["cost_micro_usd"] / 1_000_000, 6),
                "turns": sums["turns"], "jobs": sums["jobs"]}

    total = dict.fromkeys(USAGE_KINDS, 0)
    for sums in per.values():
        for kind in USAGE_KINDS:
            total[kind] += sums[kind]
    return shown(total), {agent: shown(per[agent]) for agent in sorted(per)}


def job_idle_timeout(cfg: Config, entry: Mapping[str, Any]) -> float | None:
    """The job's idle timeout: its own (`submit --idle-timeout`), else its agent's
    `idle_timeout`, else None (no limit)."""
    own = entry.get("idle_timeout")
    if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
        return float(own)
    agent = cfg.agents.get(str(entry.get("agent")))
    if agent is not None and agent.idle_timeout is not None:
        return float(agent.idle_timeout)
    return None


#: What a retry takes over from the job it retries (the rest is the queue's, or new).
RETRY_KEYS: tuple[str, ...] = ("agent", "prompt", "repos", "callback", "timeout", "batch",
                               "exclusive", "idle_timeout", "priority", "labels", "retries",
                               "push")


def retry_spec(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The submission that reruns a job: its spec (RETRY_KEYS that are set), as a user
    would submit it (`batchctl retry`, `POST /v1/jobs/{id}/retry`; the scheduler's own
    retries take one retry off)."""
    return {k: entry[k] for k in RETRY_KEYS if entry.get(k) is not None}


def job_timeout(cfg: Config, entry: Mapping[str, Any]) -> float:
    """The job's timeout: its own, else its agent's, else scheduler.job_timeout (seconds)."""
    own = entry.get("timeout")
    if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
        return float(own)
    agent = cfg.agents.get(str(entry.get("agent")))
    if agent is not None and agent.timeout is not None:
        return float(agent.timeout)
    return float(cfg.scheduler.job_timeout)


# -- what a result means --------------------------------------------------------------------
# The adaptor's result.json is its last word; these functions are the one reading of it,
# used by the scheduler's job table (when it records the end) and by batchctl (which shows
# a finished job as it will be recorded while the scheduler has not done it yet).

#: result.json's reason when the adaptor stopped an agent that wrote nothing for its
#: idle_timeout; the job's reason is then exactly this (CONTRACT.md).
IDLE_REASON = "idle"


def result_state(entry: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """The terminal state a result record means for its job: completed (exit 0 and no
    reason: an agent that reported an error has one), timed_out (the adaptor's timer, or
    its idle timer), cancelled (a cancel was asked), else failed."""
    reason = result.get("reason")
    if result.get("exit_code") == 0 and not reason and not result.get("signal"):
        return "completed"
    if reason in ("timed_out", IDLE_REASON) or result.get("timed_out") is True:
        return "timed_out"
    if entry.get("cancel_requested"):
        return "cancelled"
    return "failed"


def result_reason(result: Mapping[str, Any]) -> str:
    """Why a job failed, from its result: the adaptor's reason, else the signal or exit."""
    reason, code, sig = result.get("reason"), result.get("exit_code"), result.get("signal")
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(sig, int) and sig:
        return f"killed by signal {sig}"
    if isinstance(code, int):
        return f"exit {code}"
    return "ended without an exit status"


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:g}s"


def settled_fields(entry: Mapping[str, Any], result: Mapping[str, Any],
                   timeout: float | None, now: str) -> dict[str, Any]:
    """The terminal fields recorded for a job whose adaptor wrote `result`: state,
    finished_at, exit_code, reason, signal, session_id, usage, changes (and started_at if
    unknown).
    `now` (ISO) is the finish time when the result does not say.

    The agent's own verdict is in the result: an agent that reported an error (even with
    exit 0) has the reason `agent error: <its message>`, so the job is failed and says why;
    one stopped for writing nothing for its idle_timeout is timed_out with reason `idle`."""
    state = result_state(entry, result)
    code = result.get("exit_code")
    fields: dict[str, Any] = {
        "state": state,
        "finished_at": result["finished_at"] if isinstance(result.get("finished_at"), str)
        else now,
        "exit_code": code if isinstance(code, int) and not isinstance(code, bool) else None,
        "reason": {"completed": None,
                   "timed_out": f"timed out after {_secs(timeout)}",
                   "cancelled": "cancelled by operator",
                   "failed": None}[state],
        "signal": result.get("signal"),
        "session_id": result.get("session_id"),
        "usage": usage_of(result.get("usage")),
        "changes": changes_of(result.get("changes")),
    }
    if state == "timed_out" and result.get("reason") == IDLE_REASON:
        fields["reason"] = IDLE_REASON
    if state == "failed":
        fields["reason"] = result_reason(result)
    if not entry.get("started_at") and isinstance(result.get("started_at"), str):
        fields["started_at"] = result["started_at"]
    return fields
