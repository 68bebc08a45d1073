"""One chaos run: the rig, the receiver, and four threads (systemd, workload, faults,
monitor) for `duration` seconds; then the settle and the checks (bench.chaos.checks).

Every random choice comes from generators seeded from the run's seed (one per concern), so
a seed replays the same workload and the same fault sequence; the interleavings with the
real processes still vary, which is the point of running many seeds.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import checks
from bench.chaos.faults import FAULTS, REDRAW, Fault
from bench.chaos.features import detect
from bench.chaos.receiver import Receiver
from bench.chaos.rig import CB_TIMEOUT_S, GRACE_S, PY, ROOT, Rig
from bench.chaos.workload import AGENT_ADAPTORS, PARTS, Gen, JobPlan, Part

__all__ = ["Options", "Run", "run"]

#: At most this many acknowledged jobs not yet seen finished: the queue stays short, so the
#: settle is bounded and the faults hit jobs in every state.
MAX_OUTSTANDING = 50
#: How long the settle may take before the run says batchd did not settle.
SETTLE_BOUND_S = 240.0
#: The settle window for batch events, once batchd has it (bench.chaos.features).
BATCH_SETTLE = "  batch_settle: 1s\n"
MONITOR_EVERY_S = 3.0


@dataclass
class Options:
    seed: int
    duration: float
    rate: float = 3.5            # faults drawn per second
    slots: int = 8               # scheduler.max_concurrent_jobs
    work: Path | None = None     # keep the run's folder here (default: a temp dir, removed)
    keep: bool = False
    tmpfs: bool = True
    quiet: bool = False


@dataclass
class Submitted:
    """One `batchctl submit` the workload made and how it ended."""

    part: str
    plans: list[JobPlan]
    rc: int
    err: str
    at: float


class Timers:
    """Deferred actions (SIGCONT, free the disk, resume) on one thread; flush() runs the
    pending ones at once (before the settle)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.n = 0
        self.cv = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="timers", daemon=True)
        self.thread.start()

    def add(self, delay: float, fn: Callable[[], None]) -> None:
        with self.cv:
            self.n += 1
            heapq.heappush(self.heap, (time.monotonic() + delay, self.n, fn))
            self.cv.notify()

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.stopped and (not self.heap
                                            or self.heap[0][0] > time.monotonic()):
                    self.cv.wait(None if not self.heap
                                 else max(0.0, self.heap[0][0] - time.monotonic()))
                if self.stopped:
                    return
                _, _, fn = heapq.heappop(self.heap)
            fn()

    def flush(self) -> None:
        with self.cv:
            pending = [fn for _, _, fn in sorted(self.heap)]
            self.heap.clear()
            self.stopped = True
            self.cv.notify()
        for fn in pending:
            fn()


class Systemd:
    """Restarts batchd when it exits, as `Restart=always` would, after a random delay; an
    exit it was not told to expect (a SIGKILL, a SIGTERM restart) is a violation."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rng = random.Random(f"{run.opts.seed}:systemd")
        self.expecting: str | None = None
        self.sent: set[str] = set()     # every signal sent to this batchd ("kill", "term")
        self.restarting = False
        self.stopping = False
        self.exits: list[dict[str, Any]] = []
        self.signalled_at = 0.0
        self.thread = threading.Thread(target=self._loop, name="systemd", daemon=True)

    def expect(self, kind: str) -> None:
        self.expecting = kind
        self.sent.add(kind)
        self.signalled_at = time.monotonic()

    def _loop(self) -> None:
        rig = self.run.rig
        while not self.stopping:
            proc = rig.proc
            assert proc is not None
            try:
                rc = proc.wait(0.2)
            except Exception:   # noqa: BLE001  (subprocess.TimeoutExpired: still running)
                if (self.expecting == "term"
                        and time.monotonic() - self.signalled_at > 30.0):
                    self.run.violation("batchd", "batchd did not exit within 30 s of SIGTERM")
                    proc.kill()
                continue
            self.restarting = True
            kind, self.expecting = self.expecting, None
            sent, self.sent = self.sent, set()
            took = time.monotonic() - self.signalled_at
            self.exits.append({"kind": kind, "rc": rc, "stop_s": round(took, 3)})
            if rc == -signal.SIGKILL and "kill" in sent:
                pass        # (a SIGTERM then a SIGKILL before the exit was seen: the kill won)
            elif rc == 0 and "term" in sent:
                self.run.fault_ms["sigterm_stop_ms"].append(took * 1000)
            elif rc == -signal.SIGTERM and "term" in sent:
                # SIGTERM before batchd set its handler (it was starting): the default action,
                # a clean stop for systemd (SuccessExitStatus); its workers die with it.
                self.run.note("a SIGTERM reached batchd before its handler (exit by the "
                              "signal, clean for systemd)")
            elif self.run.in_enospc(time.time(), slack=10.0):
                self.run.note(f"batchd exited {rc} during an ENOSPC window (restarted)")
            else:
                self.run.violation("batchd", f"batchd exited {rc} by itself"
                                   + (f" after {kind}" if kind else ""))
            if self.stopping:
                break
            delay = self.rng.uniform(0.05, 1.0) if kind == "kill" else 0.1
            time.sleep(delay)
            rig.start()
            self.restarting = False


@dataclass
class Run:
    """The state of one chaos run (the threads share it; counters under `lock`)."""

    opts: Options
    rig: Rig
    receiver: Receiver
    features: frozenset[str]
    parts: list[Part]
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    kills_by: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    tries: Counter[str] = field(default_factory=Counter)
    fault_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    job_kills: dict[str, list[tuple[str, float]]] = field(
        default_factory=lambda: defaultdict(list))
    cancels: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    submitted: list[Submitted] = field(default_factory=list)
    plans: dict[str, JobPlan] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    ambiguous: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended_twice: list[str] = field(default_factory=list)
    violations_early: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)
    enospc_windows: list[tuple[float, float]] = field(default_factory=list)
    scheduler_deaths: list[float] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)
    disk_full: bool = False
    disk_next: float = 0.0
    timers: Timers = field(default_factory=Timers)
    systemd: Systemd = field(init=False)
    rng_faults: random.Random = field(init=False)
    rng_work: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.systemd = Systemd(self)
        self.rng_faults = random.Random(f"{self.opts.seed}:faults")
        self.rng_work = random.Random(f"{self.opts.seed}:workload")

    # -- bookkeeping -------------------------------------------------------------------------
    def killed(self, target: str, job: str | None) -> None:
        now = time.time()
        with self.lock:
            self.kills_by[target] += 1
            if job is not None:
                self.job_kills[job].append((target, now))
            if target in ("batchd", "scheduler"):
                self.scheduler_deaths.append(now)

    def fault(self, name: str) -> None:
        with self.lock:
            self.faults[name] += 1
            if name == "sigterm":
                self.scheduler_deaths.append(time.time())

    def violation(self, invariant: str, text: str) -> None:
        with self.lock:
            self.violations_early[invariant].append(text)

    def note(self, text: str) -> None:
        with self.lock:
            if text not in self.notes:
                self.notes.append(text)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.add(delay, fn)

    def in_enospc(self, t: float, slack: float = 0.0) -> bool:
        windows = list(self.enospc_windows)
        if self.disk_full:
            windows.append((t - 3600, t + 1))
        return any(a - slack <= t <= b + slack for a, b in windows)

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)

    # -- the workload --------------------------------------------------------------------------
    def outstanding(self) -> int:
        with self.lock:
            return sum(1 for j in self.acked
                       if self.seen.get(j, {}).get("state") not in checks.TERMINAL)

    def workload(self) -> None:
        gen = Gen(self.rng_work, tag=f"c{self.opts.seed % 10**8}",
                  urls=(f"{self.receiver.base}/hook/a", f"{self.receiver.base}/hook/b"),
                  features=self.features)
        weights = [p.weight for p in self.parts]
        markers = str(self.rig.markers)
        while not self.stop.is_set():
            if self.outstanding() >= MAX_OUTSTANDING:
                self.stop.wait(0.3)
                continue
            r = gen.rng.random()
            if r < 0.08:
                self._cancel_one(gen)
            elif r < 0.09:
                self._pause_a_while(gen)
            part = gen.rng.choices(self.parts, weights)[0]
            sub = part.make(gen)
            if sub is None:
                continue
            argv, stdin = sub.argv_and_stdin(markers, time.time())
            done = self.rig.ctl(*argv, stdin=stdin, timeout=60)
            ids = [p.id for p in sub.plans]
            with self.lock:
                for p in sub.plans:
                    self.plans[p.id] = p
                self.submitted.append(Submitted(part.name, sub.plans, done.returncode,
                                                done.stderr.decode(errors="replace")[-300:],
                                                time.time()))
                if done.returncode == 0:
                    got = done.stdout.decode().split()
                    if got != ids:
                        self.violations_early["submissions"].append(
                            f"submit printed {got[:3]}..., expected {ids[:3]}...")
                    self.acked.update(ids)
                    gen.acked.extend(ids)
                elif done.returncode == 124:
                    self.ambiguous.update(ids)
                else:
                    for i in ids:
                        self.refused[i] = done.stderr.decode(errors="replace").strip()[-200:]
            self.stop.wait(gen.rng.uniform(0.0, 0.25))

    def _cancel_one(self, gen: Gen) -> None:
        with self.lock:
            live = sorted(j for j in self.acked
                          if self.seen.get(j, {}).get("state") not in checks.TERMINAL)
        if not live:
            return
        job = gen.rng.choice(live)
        done = self.rig.ctl("cancel", job, timeout=60)
        with self.lock:
            self.cancels[job].append((time.time(), done.returncode))

    def _pause_a_while(self, gen: Gen) -> None:
        # A pause that failed (batchd down, a full disk) may still have reached the
        # scheduler (its request written, the reply not awaited): resume all the same.
        paused = self.rig.ctl("pause", timeout=60).returncode == 0
        start = time.time()
        if paused:
            self.faults["pause"] += 1

        def resume() -> None:
            # As an operator would: a resume refused (batchd down, a full disk) is asked
            # again until it is done (the settle resumes anyway).
            if self.rig.ctl("resume", timeout=60).returncode != 0 and not self.stop.is_set():
                self.later(1.0, resume)
                return
            self.pauses.append((start, time.time()))

        self.later(gen.rng.uniform(0.5, 3.0), resume)

    # -- the faults ----------------------------------------------------------------------------
    def chaos(self) -> None:
        rng = self.rng_faults
        weights = [f.weight for f in FAULTS]
        redraw_weights = [f.weight for f in REDRAW]
        while not self.stop.wait(rng.expovariate(self.opts.rate)):
            # One draw; when it cannot apply now, redraws among the faults that hit a
            # worker or a job only (so batchd's own restarts keep their share of the rate),
            # for up to a second: a fault that is due waits a little for a target.
            fault: Fault = rng.choices(FAULTS, weights)[0]
            give_up = time.monotonic() + 1.0
            while not self.stop.is_set():
                self.tries[fault.name] += 1
                if fault.act(self) or time.monotonic() > give_up:
                    break
                fault = rng.choices(REDRAW, redraw_weights)[0]
                time.sleep(0.02)

    # -- the monitor -----------------------------------------------------------------------------
    def monitor(self) -> None:
        while not self.stop.wait(MONITOR_EVERY_S):
            self.observe()

    def observe(self) -> list[dict[str, Any]] | None:
        """One `batchctl jobs --json`: note what changed; a finished job must never change."""
        jobs = self.rig.ctl_json("jobs", timeout=120)
        if not isinstance(jobs, list):
            return None
        with self.lock:
            for rec in jobs:
                job = str(rec.get("id"))
                was = self.seen.get(job)
                if (was is not None and was.get("state") in checks.TERMINAL
                        and (was.get("state"), was.get("finished_at"))
                        != (rec.get("state"), rec.get("finished_at"))):
                    self.ended_twice.append(
                        f"{job}: {was.get('state')} at {was.get('finished_at')}, then "
                        f"{rec.get('state')} at {rec.get('finished_at')}")
                self.seen[job] = rec
        return jobs

    # -- the settle --------------------------------------------------------------------------------
    def settle(self) -> tuple[float, dict[str, Any]]:
        """After the faults: batchd up, nothing paused; wait (bounded) until every job is
        finished, every webhook settled, no lock held or awaited, every worker RUNNING.
        (ms it took, the last documents read)."""
        t0 = time.monotonic()
        self.timers.flush()
        self.systemd.stopping = True
        self.systemd.thread.join(5.0)
        if self.rig.batchd_pid is None:
            self.rig.start()
        self.rig.ctl("resume", timeout=60)
        docs: dict[str, Any] = {}
        while True:
            docs = self.documents()
            waiting = checks.unsettled(docs)
            if not waiting:
                return (time.monotonic() - t0) * 1000, docs
            if time.monotonic() - t0 > SETTLE_BOUND_S:
                self.violation("settle", f"not settled after {SETTLE_BOUND_S:g} s: "
                               + "; ".join(waiting))
                return (time.monotonic() - t0) * 1000, docs
            time.sleep(0.5)

    def documents(self) -> dict[str, Any]:
        jobs = self.observe()
        return {"jobs": jobs,
                "workers": self.rig.ctl_json("workers"),
                "locks": self.rig.ctl_json("locks"),
                "callbacks": self.rig.ctl_json("callbacks"),
                "batches": self.rig.ctl_json("batches"),
                "stats": self.rig.ctl_json("stats")}


def _agents_config(work: Path) -> str:
    """The fake agents (tests/fakes, the strict fakes of the real-agent adaptors)."""
    bin_dir, home = work / "bin", work / "home"
    bin_dir.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    fakes = ROOT / "tests" / "fakes"
    env = (f"{{ANTHROPIC_API_KEY: sk-chaos, OPENAI_API_KEY: sk-chaos, GEMINI_API_KEY: chaos, "
           f"GEMINI_CLI_TRUST_WORKSPACE: 'true', FAKE_HOME: {home}}}")
    lines = ["agents:"]
    for name in AGENT_ADAPTORS:
        wrapper = bin_dir / name
        wrapper.write_text(f"#!/bin/sh\nexec '{PY}' '{fakes}/fake_{name}.py' \"$@\"\n")
        wrapper.chmod(0o755)
        model = ", model: openai/gpt-4o" if name == "aider" else ""
        lines.append(f"  fake-{name}: {{adaptor: {name}, command: {wrapper}{model}, "
                     f"env: {env}}}")
    return "\n".join(lines) + "\n"


def run(opts: Options) -> dict[str, Any]:
    """Make one chaos run; its report (bench.chaos.checks.report)."""
    work = opts.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    tmpfs_mb = (512 + int(opts.duration * 1.2)) if opts.tmpfs else None
    rig = Rig(work, slots=opts.slots, tmpfs_mb=tmpfs_mb)
    receiver = Receiver(random.Random(f"{opts.seed}:receiver").randrange(1 << 30),
                        hang_s=CB_TIMEOUT_S + 0.5)
    run_: Run | None = None
    try:
        features = detect(rig)
        agents = _agents_config(work) if "agents" in features else ""
        rig.write_config(agents=agents, callbacks_extra=BATCH_SETTLE
                         if "batch_settle" in features else "")
        parts = [p for p in PARTS if p.needs is None or p.needs in features]
        run_ = Run(opts, rig, receiver, features, parts)
        run_.notes.extend(rig.notes)
        for p in PARTS:
            if p.needs is not None and p.needs not in features:
                run_.note(f"workload part {p.name!r} skipped: this batchd has no {p.needs!r} "
                          f"yet (bench.chaos.features)")
        if "batch_settle" not in features:
            run_.note("batch events checked at least once per batch and URL (no "
                      "callbacks.batch_settle yet; exactly once when it lands)")
        for note in run_.notes:
            run_.say(f"note: {note}")
        receiver.start()
        rig.start()
        run_.systemd.thread.start()
        threads = [threading.Thread(target=t, name=t.__name__, daemon=True)
                   for t in (run_.workload, run_.chaos, run_.monitor)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - t_start < opts.duration:
            time.sleep(min(5.0, opts.duration - (time.monotonic() - t_start)))
            if not opts.quiet and int(time.monotonic() - t_start) % 30 < 5:
                run_.say(f"  {time.monotonic() - t_start:5.0f} s: kills "
                         f"{sum(run_.kills_by.values())}, jobs {len(run_.acked)} "
                         f"acknowledged, {run_.outstanding()} outstanding")
        run_.stop.set()
        phase = time.monotonic() - t_start
        for t in threads:
            t.join(120)
        fault_end = time.time()
        settle_ms, docs = run_.settle()
        # give the reaper what the rules give it (grace + two passes) before leftovers count
        wait = fault_end + GRACE_S + 2 * 2.0 + 3.0 - time.time()
        if wait > 0:
            time.sleep(wait)
        docs = run_.documents()
        return checks.report(run_, docs, settle_ms, duration=phase)
    finally:
        if run_ is not None:
            run_.stop.set()
            run_.systemd.stopping = True
            with contextlib.suppress(Exception):
                run_.timers.flush()
        rig.close(keep=opts.keep)
        receiver.stop()
        if not (opts.keep or opts.work):
            shutil.rmtree(work, ignore_errors=True)


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)
