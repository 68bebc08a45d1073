"""The chaos run's invariants, checked after the settle: one line each, with counts.

Every check reads what an operator can read (batchctl's `--json` documents, the jobs'
output files by their `output_path`, the receiver's log, the markers the jobs wrote outside
the state dir, /proc, and the names of files left under the state dir) and compares it
with what the run did (the plans, the acknowledgements, the kills and cancels it sent).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.chaos.faults import KILL_TARGETS
from bench.chaos.rig import GRACE_S, REPOS, WS_RETENTION_S
from bench.chaos.workload import PUSHED_FILE, JobPlan, expected
from supervisor.state.clock import parse_iso

if TYPE_CHECKING:
    from bench.chaos.run import Run

__all__ = ["TERMINAL", "Check", "report", "unsettled"]

TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out", "lost"})
EXAMPLES = 5
REAPER_INTERVAL_S = 2.0
#: How long the reaper may take to remove something once its rule allows it: two passes
#: and a margin (a pass may be killed halfway; the next one finishes it).
REAP_SLACK_S = 2 * REAPER_INTERVAL_S + 3.0


@dataclass
class Check:
    """One invariant: what it counted, and every violation found."""

    name: str
    counts: str = ""
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.violations:
            return f"ok    {self.name}: {self.counts}"
        return (f"FAIL  {self.name}: {len(self.violations)} violation(s); {self.counts}\n"
                + "\n".join(f"        {v}" for v in self.violations[:EXAMPLES]))


def unsettled(docs: dict[str, Any]) -> list[str]:
    """What still moves: unfinished jobs, pending webhooks, locks, workers not RUNNING."""
    out = []
    jobs = docs.get("jobs")
    if not isinstance(jobs, list):
        return ["jobs unreadable"]
    live = [j["id"] for j in jobs if j.get("state") not in TERMINAL]
    if live:
        out.append(f"{len(live)} jobs not finished (e.g. {live[:3]})")
    cbs = docs.get("callbacks")
    if not isinstance(cbs, list):
        out.append("callbacks unreadable")
    else:
        moving = [c["id"] for c in cbs if c.get("state") in ("pending", "in_flight")]
        if moving:
            out.append(f"{len(moving)} webhooks pending")
    locks = docs.get("locks")
    if not isinstance(locks, dict):
        out.append("locks unreadable")
    elif locks.get("held") or any(locks.get("waiting", {}).values()):
        out.append("locks held or awaited")
    workers = docs.get("workers")
    if not isinstance(workers, list) or any(w.get("state") != "RUNNING" for w in workers):
        out.append("workers not all RUNNING")
    return out


def _t(iso: Any) -> float | None:
    return parse_iso(iso) if isinstance(iso, str) else None


class Facts:
    """What the checks share: the final records, the plans behind them, the markers."""

    def __init__(self, run: Run, docs: dict[str, Any]) -> None:
        self.run = run
        self.jobs: list[dict[str, Any]] = docs.get("jobs") or []
        self.by_id = {str(j["id"]): j for j in self.jobs}
        self.retried_as = {str(j["retry_of"]): str(j["id"]) for j in self.jobs
                           if j.get("retry_of")}
        self.starts: dict[str, list[tuple[int, int]]] = defaultdict(list)   # job -> (pid, ns)
        self.ends: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for line in run.rig.markers.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            kind, job, pid, ns = parts
            (self.starts if kind == "S" else self.ends)[job].append((int(pid), int(ns)))

    def plan(self, job: str) -> JobPlan | None:
        """The plan a job runs: its own, or its retry chain's root's."""
        seen = set()
        while job not in self.run.plans:
            rec = self.by_id.get(job)
            if rec is None or not rec.get("retry_of") or job in seen:
                return None
            seen.add(job)
            job = str(rec["retry_of"])
        return self.run.plans[job]

    def chain(self, job: str) -> list[str]:
        """`job` and its retries, in order (`retry_of` followed backwards)."""
        out = [job]
        while True:
            nxt = self.retried_as.get(out[-1])
            if not nxt or nxt in out:
                return out
            out.append(nxt)

    def life(self, rec: dict[str, Any]) -> tuple[float, float]:
        return (_t(rec.get("created_at")) or 0.0, _t(rec.get("finished_at")) or 1e18)


# -- 1. every acknowledged submission exists and ended once, as its history explains ------------

def _times_out(plan: JobPlan) -> bool:
    return plan.timeout is not None and plan.duration >= plan.timeout


def explain(f: Facts, rec: dict[str, Any]) -> str | None:
    """Why this job ended as it did, from what the run did to it; None: nothing explains it."""
    job, state, reason = str(rec["id"]), rec.get("state"), str(rec.get("reason") or "")
    plan = f.plan(job)
    if plan is None:
        return None
    kills = {target for target, _ in f.run.job_kills.get(job, [])}
    cancelled = any(rc == 0 for _, rc in f.run.cancels.get(job, []))
    born, ended = f.life(rec)
    if state == "completed":
        if not plan.shell or (plan.exit_code == 0 and not _times_out(plan)):
            return "ran to its end"
        return None
    if state == "cancelled":
        return "cancelled by the run" if cancelled else None
    if state == "timed_out":
        return "its timeout" if _times_out(plan) else None
    if state == "lost":
        return "its adaptor SIGKILLed" if "adaptor" in kills else None
    if state != "failed":
        return None
    m = re.fullmatch(r"dependency (\S+) (\w+)", reason)
    if m:
        dep, dep_state = m.group(1), m.group(2)
        deps = [d for a in plan.after for d in f.chain(a)]
        if dep in deps and f.by_id.get(dep, {}).get("state") == dep_state != "completed":
            return "a dependency ended otherwise"
        return None
    if plan.shell and plan.exit_code and reason == f"exit {plan.exit_code}":
        return "designed to fail"
    if reason == "killed by signal 9" and "agent" in kills:
        return "its agent SIGKILLed"
    started = _t(rec.get("started_at"))
    if (plan.shell and plan.push and reason == "exit 1" and started is not None
            and f.run.in_enospc(started, slack=5.0)):
        # its first command writes a file into the workspace, on the full file system
        return "its own write failed in an ENOSPC window"
    if reason.startswith("not launched:") and any(
            born <= t <= ended for t in f.run.scheduler_deaths):
        return "launch interrupted by scheduler deaths"
    if reason.startswith("launch failed") and any(
            f.run.in_enospc(t, slack=40.0) for t in (born, ended)):
        return "launch failed in an ENOSPC window"
    if not plan.shell and not kills:
        return None
    return None


def check_submissions(f: Facts) -> Check:
    c = Check("submissions exist and ended once, as their history explains")
    run = f.run
    for job in sorted(run.acked):
        rec = f.by_id.get(job)
        if rec is None:
            c.violations.append(f"{job}: acknowledged, not in `jobs`")
        elif rec.get("state") not in TERMINAL:
            c.violations.append(f"{job}: still {rec.get('state')} after the settle")
    for job in sorted(run.refused):
        if job in f.by_id:
            c.violations.append(f"{job}: its submission was refused ({run.refused[job]!r}) "
                                "but it was queued")
    retries = 0
    for job, rec in f.by_id.items():
        if job in run.acked or job in run.ambiguous:
            continue
        parent = f.by_id.get(str(rec.get("retry_of")))
        if parent is not None and parent.get("state") in ("failed", "lost"):
            retries += 1
        else:
            c.violations.append(f"{job}: in `jobs`, never acknowledged nor a retry")
    c.violations += [f"ended twice: {e}" for e in run.ended_twice]
    states: Counter[str] = Counter()
    why: Counter[str] = Counter()
    for job, rec in f.by_id.items():
        state = str(rec.get("state"))
        states[state] += 1
        if state not in TERMINAL:
            continue
        reason = explain(f, rec)
        if reason is None:
            plan = f.plan(job)
            c.violations.append(
                f"{job}: {state} ({rec.get('reason')!r}) unexplained; part "
                f"{plan.part if plan else '?'}, kills {run.job_kills.get(job, [])}, "
                f"cancels {run.cancels.get(job, [])}")
        else:
            why[reason] += 1
    c.counts = (f"{len(run.acked)} acknowledged, {len(run.refused)} refused, "
                f"{len(run.ambiguous)} ambiguous, {retries} retries; "
                + ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
                + "; why: " + ", ".join(f"{w} {n}" for w, n in why.most_common()))
    return c


# -- 2. no job ran twice ------------------------------------------------------------------------

def check_ran_once(f: Facts) -> Check:
    c = Check("no job ran twice")
    for job, starts in sorted(f.starts.items()):
        if len(starts) > 1:
            c.violations.append(f"{job}: started {len(starts)} times (pids "
                                f"{[p for p, _ in starts]})")
        if job not in f.by_id:
            c.violations.append(f"{job}: ran, unknown to `jobs`")
    c.counts = f"{len(f.starts)} shell jobs started, {sum(map(len, f.ends.values()))} ran " \
        "to their last line"
    return c


# -- 3. no two exclusive jobs on one repository overlapped -----------------------------------------

def check_exclusive(f: Facts) -> Check:
    c = Check("no two exclusive jobs on one repository overlapped")
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for job, starts in f.starts.items():
        plan, rec = f.plan(job), f.by_id.get(job)
        if plan is None or rec is None:
            continue
        begin = starts[0][1] / 1e9
        if f.ends.get(job):
            end = f.ends[job][-1][1] / 1e9
        else:
            end = _t(rec.get("finished_at")) or 1e18
        for repo in plan.repos:
            if plan.whole_run(repo):
                spans[repo].append((begin, end, job))
    for repo, runs in sorted(spans.items()):
        runs.sort()
        latest: tuple[float, float, str] | None = None      # the run that ends last so far
        for run in runs:
            if latest is not None and run[0] < latest[1]:
                b1, e1, j1 = latest
                c.violations.append(f"{repo}: {j1} ran {b1:.3f}-{e1:.3f}, {run[2]} started "
                                    f"{run[0]:.3f} ({(e1 - run[0]) * 1000:.0f} ms inside)")
            if latest is None or run[1] > latest[1]:
                latest = run
    c.counts = ", ".join(f"{r} {len(spans.get(r, []))} runs" for r in REPOS if REPOS[r]
                         or spans.get(r)) + " (each a whole run)"
    return c


# -- 4. output complete and in order ----------------------------------------------------------

def _full_disk_words(f: Facts, rec: dict[str, Any], got: bytes) -> bool:
    """A --push job whose first command could not write its file on the full file system
    (explain: "its own write failed in an ENOSPC window") prints the shell's line on it
    instead of its own lines: that whole line (a cut one is output lost: a violation)."""
    if explain(f, rec) != "its own write failed in an ENOSPC window":
        return False
    words = re.compile(rb"sh: \d+: cannot create " + re.escape(
        f"{PUSHED_FILE}{rec['id']}.txt".encode()) + rb": [^\n]*\n")
    return bool(words.fullmatch(got))


def check_output(f: Facts) -> Check:
    c = Check("every completed job's output is complete and in order, byte for byte")
    whole = prefixes = big = 0
    for job, rec in sorted(f.by_id.items()):
        plan = f.plan(job)
        if plan is None or not plan.shell or rec.get("state") not in TERMINAL:
            continue
        try:
            got = Path(str(rec.get("output_path"))).read_bytes()
        except FileNotFoundError:
            got = b""         # never started (cancelled, a dependency failed, killed early)
        except OSError as exc:
            c.violations.append(f"{job}: output unreadable: {exc}")
            continue
        want = expected(plan, job)
        if rec["state"] == "completed":
            whole += 1
            big += bool(plan.big)
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False))
                           if a != b), min(len(got), len(want)))
                c.violations.append(f"{job}: {len(got)} bytes, expected {len(want)}; first "
                                    f"difference at byte {at}: {got[at:at + 40]!r}")
            if not f.ends.get(job):
                c.violations.append(f"{job}: completed, but its program never reached its end")
        else:
            prefixes += 1
            if not want.startswith(got) and not _full_disk_words(f, rec, got):
                c.violations.append(f"{job} ({rec['state']}): its {len(got)} bytes are not a "
                                    "prefix of what it prints")
    c.counts = f"{whole} completed shell jobs whole ({big} with lines over 64 KiB), " \
        f"{prefixes} others a clean prefix"
    return c


# -- 4b. --push: what a completed job pushed is on its remote ------------------------------------

def _git_out(git_dir: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True,
                          text=True, check=False, timeout=60)
    return done.stdout if done.returncode == 0 else None


def check_push(f: Facts) -> Check:
    c = Check("every completed --push job's change is on its remote branch")
    pushed = 0
    for job, rec in sorted(f.by_id.items()):
        plan = f.plan(job)
        if plan is None or not plan.push or rec.get("state") != "completed":
            continue
        repo = plan.repos[0]
        branch = f"batchd/{job}"
        got = ((rec.get("changes") or {}).get(repo) or {}).get("branch")
        if got != branch:
            c.violations.append(f"{job}: changes.{repo}.branch is {got!r}, not {branch!r}")
        name = f"{PUSHED_FILE}{job}.txt"
        text = _git_out(f.run.rig.remotes[repo], "show", f"refs/heads/{branch}:{name}")
        if text != f"{job}\n":
            c.violations.append(f"{job}: {repo}'s {branch} has {name} = {text!r}")
            continue
        pushed += 1
    c.counts = f"{pushed} pushed and found on their remotes"
    return c


# -- 5. callbacks ---------------------------------------------------------------------------------

def check_callbacks(f: Facts) -> Check:
    c = Check("every callback event reached the receiver, 2xx, with one stable Idempotency-Key")
    hits_by_job: dict[str, list[Any]] = defaultdict(list)
    for h in f.run.receiver.hits:
        if h.job is not None:
            hits_by_job[h.job].append(h)
    events = delivered = tries = 0
    for job, rec in sorted(f.by_id.items()):
        url = rec.get("callback")
        if not url or rec.get("state") not in TERMINAL:
            continue
        events += 1
        hits = hits_by_job.get(job, [])
        tries += len(hits)
        keys = {h.key for h in hits}
        if not any(200 <= h.status < 300 for h in hits):
            c.violations.append(f"{job}: no 2xx among {len(hits)} tries "
                                f"({[h.status for h in hits]})")
        else:
            delivered += 1
        if len(keys) > 1:
            c.violations.append(f"{job}: {len(keys)} Idempotency-Keys: {sorted(map(str, keys))}")
        if any(h.key != h.event_id for h in hits):
            c.violations.append(f"{job}: an Idempotency-Key differs from the body's event_id")
        if any(not url.endswith(h.path) for h in hits):
            c.violations.append(f"{job}: posted to {hits[0].path}, its callback is {url}")
        states = {h.job_state for h in hits}
        if states - {rec.get("state")}:
            c.violations.append(f"{job}: the webhook said {sorted(map(str, states))}, "
                                f"the job ended {rec.get('state')}")
    stray = sorted(set(hits_by_job) - set(f.by_id))
    c.violations += [f"{j}: a webhook for a job `jobs` does not know" for j in stray]
    bad = f.run.receiver.misbehaved
    c.counts = (f"{events} events, {delivered} delivered, {tries} tries (receiver: "
                + ", ".join(f"{k} {v}" for k, v in bad.items()) + ")")
    return c


def check_batches(f: Facts, docs: dict[str, Any]) -> Check:
    strict = "batch_settle" in f.run.features
    c = Check("batch events exactly once per batch and URL" if strict else
              "batch events at least once per batch and URL (exactly once: not yet)")
    hits: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for h in f.run.receiver.hits:
        if h.batch is not None:
            hits[(h.batch, h.path)].append(h)
    pairs = repeated = 0
    wanted: set[tuple[str, str]] = set()
    for b in docs.get("batches") or []:
        members = [f.by_id[j] for j in b.get("jobs", []) if j in f.by_id]
        urls = {str(m["callback"]) for m in members if m.get("callback")}
        for url in sorted(urls):
            path = "/" + url.split("/", 3)[3]
            key = (str(b["batch"]), path)
            wanted.add(key)
            pairs += 1
            got = hits.get(key, [])
            ids = {h.event_id for h in got}
            if not any(200 <= h.status < 300 for h in got):
                c.violations.append(f"batch {key[0]} -> {path}: no 2xx among {len(got)} tries")
            if len(ids) > 1:
                repeated += 1
                if strict:
                    c.violations.append(f"batch {key[0]} -> {path}: {len(ids)} events")
            last = [h for h in got if 200 <= h.status < 300]
            if last and sorted(last[-1].batch_jobs) != sorted(b.get("jobs", [])):
                c.violations.append(f"batch {key[0]} -> {path}: the event listed "
                                    f"{len(last[-1].batch_jobs)} jobs, the batch has "
                                    f"{len(b.get('jobs', []))}")
    for key in sorted(set(hits) - wanted):
        c.violations.append(f"batch {key[0]} -> {key[1]}: an event no job of it asked for")
    c.counts = f"{pairs} (batch, URL) pairs, {repeated} with more than one event"
    return c


# -- 7. locks -------------------------------------------------------------------------------------

def check_locks(docs: dict[str, Any]) -> Check:
    c = Check("no lock held and no waiting queue left")
    locks = docs.get("locks")
    if not isinstance(locks, dict):
        c.violations.append("`locks --json` unreadable")
        return c
    c.violations += [f"held: {h}" for h in locks.get("held", [])]
    c.violations += [f"waiting on {r}: {q}" for r, q in locks.get("waiting", {}).items() if q]
    c.counts = f"{len(locks.get('held', []))} held, {len(locks.get('waiting', {}))} queues"
    return c


# -- 8. leftovers ---------------------------------------------------------------------------

def check_leftovers(f: Facts, now: float) -> Check:
    c = Check("no orphan process, temp file or unreaped workspace past retention")
    procs = f.run.rig.job_procs()
    c.violations += [f"process {p.pid} of job {p.job} ({f.by_id.get(p.job, {}).get('state')}) "
                     "is still alive" for p in procs]
    state = f.run.rig.state
    tmp_old = now - (GRACE_S + REAP_SLACK_S)
    tmps = 0
    for folder, dirs, files in os.walk(state):
        rel = Path(folder).relative_to(state).parts
        if rel[:1] in (("workspaces",), ("mirrors",)) or (rel[:1] == ("jobs",) and len(rel) > 1):
            dirs[:] = []
            continue
        for name in files:
            if name.startswith(".tmp."):
                tmps += 1
                path = Path(folder) / name
                try:
                    old = path.stat().st_mtime < tmp_old
                except FileNotFoundError:
                    continue
                if old:
                    c.violations.append(f"temp file {path.relative_to(state)} left")
    ws_dir = state / "workspaces"
    spaces = 0
    for name in sorted(os.listdir(ws_dir)) if ws_dir.is_dir() else []:
        spaces += 1
        rec = f.by_id.get(name)
        if name.startswith((".prep.", ".reap.")) or rec is None:
            try:
                age = now - (ws_dir / name).stat().st_mtime
            except FileNotFoundError:
                continue
            if age > GRACE_S + REAP_SLACK_S:
                c.violations.append(f"workspace {name} ({'no job' if rec is None else 'half'})"
                                    f" left, {age:.0f} s old")
            continue
        # The reaper takes a finished job's workspace once retention.workspaces has passed
        # since the job's end AND reaper.grace since the folder last changed (at the latest
        # the job's end: a job that writes at its top level up to its end keeps it GRACE_S)
        ended = _t(rec.get("finished_at"))
        if rec.get("state") in TERMINAL and ended is not None \
                and now - ended > max(WS_RETENTION_S, GRACE_S) + REAP_SLACK_S:
            c.violations.append(f"workspace of {name} ({rec['state']} {now - ended:.0f} s ago) "
                                "not reaped")
    c.counts = f"{len(procs)} job processes, {tmps} temp files, {spaces} workspaces left"
    return c


# -- 9. stats, 10. workers --------------------------------------------------------------------

def check_stats(f: Facts, docs: dict[str, Any]) -> Check:
    c = Check("`stats` agrees with the jobs")
    stats = docs.get("stats")
    if not isinstance(stats, dict):
        c.violations.append("`stats --json` unreadable")
        return c
    states = Counter(str(j.get("state")) for j in f.jobs)
    want = {"submitted": len(f.jobs), **{s: states[s] for s in sorted(TERMINAL)}}
    for key, n in want.items():
        if stats.get(key) != n:
            c.violations.append(f"{key}: stats says {stats.get(key)}, the jobs {n}")
    c.counts = ", ".join(f"{k} {v}" for k, v in want.items()) + \
        f", recovered {stats.get('recovered')}"
    return c


def check_workers(docs: dict[str, Any]) -> Check:
    c = Check("all workers RUNNING")
    workers = docs.get("workers")
    if not isinstance(workers, list):
        c.violations.append("`workers --json` unreadable")
        return c
    c.violations += [f"{w.get('name')}: {w.get('state')} ({w.get('message')})"
                     for w in workers if w.get("state") != "RUNNING"]
    c.counts = ", ".join(f"{w.get('name')} {w.get('state')} (restarts {w.get('restarts')})"
                         for w in workers)
    return c


def report(run: Run, docs: dict[str, Any], settle_ms: float, *, duration: float
           ) -> dict[str, Any]:
    """Every check; the report (`--json`'s document) with each check's line."""
    import time

    f = Facts(run, docs)
    found = [
        check_submissions(f),
        check_ran_once(f),
        check_exclusive(f),
        check_output(f),
        *([check_push(f)] if "push" in run.features else []),
        check_callbacks(f),
        check_batches(f, docs),
        check_locks(docs),
        check_leftovers(f, time.time()),
        check_stats(f, docs),
        check_workers(docs),
    ]
    for name, texts in sorted(run.violations_early.items()):
        found.append(Check(name, violations=list(texts)))
    violations = sum(len(c.violations) for c in found)
    examples = [f"{c.name}: {v}" for c in found for v in c.violations[:EXAMPLES]]
    kills_by = {t: run.kills_by.get(t, 0) for t in KILL_TARGETS}
    return {
        "seed": run.opts.seed,
        "duration_s": round(duration, 1),
        "kills": sum(kills_by.values()),
        "kills_by": kills_by,
        "jobs": len(f.jobs),
        "violations": violations,
        "violation_examples": examples[:20],
        "settle_ms": round(settle_ms, 1),
        "faults": dict(run.faults),
        "fault_draws": dict(run.tries),
        "features": sorted(run.features),
        "parts": sorted({p.name for p in run.parts}),
        "notes": list(run.notes),
        "checks": [c.line() for c in found],
    }
