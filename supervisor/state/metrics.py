"""Prometheus metrics of a state directory, in the text format prometheus-client writes.

The api's `GET /metrics` and the reaper's `metrics.textfile` (node_exporter's textfile
collector) show the same text, made here from the same reads batchctl makes (the view,
workers.json, the callbacks outbox); the exposition format comes from prometheus-client
(`generate_latest` over a registry of one collector), never written by hand.

    batchd_up, batchd_paused
    batchd_jobs{state}                        jobs per state (every state, 0 included)
    batchd_queue_depth                        jobs not started yet (queued + waiting)
    batchd_jobs_submitted_total               the queue's `submitted` counter
    batchd_jobs_finished_total{state}         the queue's counters per terminal state
    batchd_job_duration_seconds{agent,state}  histogram of finished_at - started_at
    batchd_agent_cost_usd_total{agent}        sum of the jobs' usage.cost_usd
    batchd_agent_tokens_total{agent,kind}     sum of usage.input_tokens / output_tokens
    batchd_worker_up{worker}, batchd_worker_restarts_total{worker}
    batchd_callbacks_total{outcome}           webhook deliveries delivered / failed
    batchd_callbacks_pending                  deliveries not ended yet

Speed: a finished job never changes, so `Metrics` keeps what each finished job adds to the
histogram and the sums (job id -> its numbers), and decodes only the bodies of jobs that
finished since the last exposition; the rest comes from the queue's columns. A process
that restarts rebuilds the cache on its first exposition. The sums cover the jobs the
queue still holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from supervisor.config import Config, enabled_workers
from supervisor.state.atomic import ensure_dir, write_bytes
from supervisor.state.clock import parse_iso
from supervisor.state.documents import deliveries
from supervisor.state.layout import Layout
from supervisor.state.queue import COUNTERS, JOB_STATES, TERMINAL_STATES
from supervisor.state.view import Unreadable, batchd_pid, open_view, read_workers
from supervisor.state.webhook import read_pruned

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics", "write_textfile"]

#: The exposition's Content-Type (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Job duration buckets (seconds): agents run from seconds to a day.
BUCKETS: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                              3600.0, 7200.0, 14400.0, 43200.0, 86400.0)


@dataclass(frozen=True)
class _Done:
    """What one finished job adds: its agent, state, duration (None: never started), usage."""

    agent: str
    state: str
    duration: float | None
    cost: float
    input_tokens: int
    output_tokens: int


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else 0.0


def _done(entry: dict[str, Any]) -> _Done:
    start, end = parse_iso(entry.get("started_at")), parse_iso(entry.get("finished_at"))
    usage = entry.get("usage") if isinstance(entry.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return _Done(agent=str(entry.get("agent")), state=str(entry.get("state")),
                 duration=None if start is None or end is None else max(0.0, end - start),
                 cost=_number(usage.get("cost_usd")),
                 input_tokens=int(_number(usage.get("input_tokens"))),
                 output_tokens=int(_number(usage.get("output_tokens"))))


class _Histogram:
    """Bucket counts (cumulative at exposition) and the sum, for one (agent, state)."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def add(self, value: float, sign: int = 1) -> None:
        i = next((n for n, bound in enumerate(BUCKETS) if value <= bound), len(BUCKETS))
        self.counts[i] += sign
        self.total += sign * value
        self.count += sign

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class Metrics:
    """Makes the exposition of one state directory, caching what finished jobs add."""

    def __init__(self, cfg: Config, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout
        self._done: dict[str, _Done] = {}
        self._hist: dict[tuple[str, str], _Histogram] = {}
        self._cost: dict[str, float] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()             # one exposition at a time (the cache)

    def _account(self, d: _Done, sign: int) -> None:
        if d.duration is not None:
            self._hist.setdefault((d.agent, d.state), _Histogram()).add(d.duration, sign)
        self._cost[d.agent] = self._cost.get(d.agent, 0.0) + sign * d.cost
        for kind, n in (("input", d.input_tokens), ("output", d.output_tokens)):
            key = (d.agent, kind)
            self._tokens[key] = self._tokens.get(key, 0) + sign * n

    def _refresh(self, finished: Iterable[str], get: Any) -> None:
        """Bring the cache to the finished ids the queue holds now (decode only new ones)."""
        now = finished if isinstance(finished, list) else list(finished)
        done = self._done
        new = [i for i in now if i not in done]
        if len(now) - len(new) < len(done):       # some cached job left the queue
            keep = set(now)
            for gone in [i for i in done if i not in keep]:
                self._account(done.pop(gone), -1)
        for job_id in new:
            entry = get(job_id)
            if entry is None or entry.get("state") not in TERMINAL_STATES:
                continue
            d = _done(entry)
            self._done[job_id] = d
            self._account(d, 1)

    def families(self) -> list[Metric]:
        """Every metric family, read from the state directory now."""
        out: list[Metric] = []
        pid = batchd_pid(self.layout)
        out.append(GaugeMetricFamily("batchd_up", "1 when batchd runs", value=int(pid is not None)))
        counts: dict[str, int] = {}
        stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        paused = False
        try:
            with open_view(self.cfg, self.layout) as view:
                counts = view.counts()
                stats = view.stats()
                paused = view.paused()
                if view.queue is not None:
                    q = view.queue
                    self._refresh(q.ids_in(TERMINAL_STATES), q.get)
        except Unreadable:
            pass            # the families below then say 0; batchctl status names the cause
        out.append(GaugeMetricFamily("batchd_paused", "1 when starting new jobs is paused",
                                     value=int(paused)))
        jobs = GaugeMetricFamily("batchd_jobs", "jobs per state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        out.append(jobs)
        out.append(GaugeMetricFamily("batchd_queue_depth", "jobs not started yet (queued, "
                                     "waiting)", value=counts.get("queued", 0)
                                     + counts.get("waiting", 0)))
        out.append(CounterMetricFamily("batchd_jobs_submitted", "jobs submitted",
                                       value=stats.get("submitted", 0)))
        fin = CounterMetricFamily("batchd_jobs_finished", "jobs that ended, by state",
                                  labels=["state"])
        for state in ("completed", "failed", "cancelled", "timed_out", "lost"):
            fin.add_metric([state], stats.get(state, 0))
        out.append(fin)
        out += self._job_families()
        out += self._worker_families(pid is not None)
        out += self._callback_families()
        return out

    def _job_families(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily("batchd_job_duration_seconds",
                                     "run time of finished jobs (started to finished)",
                                     labels=["agent", "state"])
        for (agent, state), h in sorted(self._hist.items()):
            if h.count:
                hist.add_metric([agent, state], h.buckets(), h.total)
        yield hist
        cost = CounterMetricFamily("batchd_agent_cost_usd", "cost the agents reported (USD)",
                                   labels=["agent"])
        for agent in sorted(set(self.cfg.agents) | set(self._cost)):
            cost.add_metric([agent], round(self._cost.get(agent, 0.0), 6))
        yield cost
        tokens = CounterMetricFamily("batchd_agent_tokens", "tokens the agents reported",
                                     labels=["agent", "kind"])
        for agent in sorted(set(self.cfg.agents) | {a for a, _ in self._tokens}):
            for kind in ("input", "output"):
                tokens.add_metric([agent, kind], self._tokens.get((agent, kind), 0))
        yield tokens

    def _worker_families(self, running: bool) -> Iterator[Metric]:
        seen = {str(w.get("name")): w for w in read_workers(self.layout)} if running else {}
        names = list(dict.fromkeys([*enabled_workers(self.cfg), *seen]))
        up = GaugeMetricFamily("batchd_worker_up", "1 when the worker is RUNNING",
                               labels=["worker"])
        restarts = CounterMetricFamily("batchd_worker_restarts",
                                       "restarts of the worker, across batchd's lives",
                                       labels=["worker"])
        for name in names:
            w = seen.get(name, {})
            up.add_metric([name], int(w.get("state") == "RUNNING"))
            total = w.get("restarts_total", w.get("restarts", 0))
            restarts.add_metric([name], total if isinstance(total, int) else 0)
        yield up
        yield restarts

    def _callback_families(self) -> Iterator[Metric]:
        try:
            rows = deliveries(self.layout)
        except Unreadable:
            rows = []
        # records removed past retention.callbacks are counted in callbacks/pruned.json;
        # those its last step names may still be on disk: counted there, not twice
        pruned, _ = read_pruned(self.layout.callbacks_pruned, owner=False)
        step = set(pruned["step"])
        by: dict[str, int] = {k: pruned[k] for k in ("delivered", "failed")}
        for r in rows:
            if r["id"] not in step:
                by[str(r["state"])] = by.get(str(r["state"]), 0) + 1
        total = CounterMetricFamily("batchd_callbacks", "webhook deliveries that ended",
                                    labels=["outcome"])
        for outcome in ("delivered", "failed"):
            total.add_metric([outcome], by.get(outcome, 0))
        yield total
        yield GaugeMetricFamily("batchd_callbacks_pending", "webhook deliveries not ended yet",
                                value=by.get("pending", 0) + by.get("in_flight", 0))

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's collector protocol."""
        yield from self.families()

    def exposition(self) -> bytes:
        """The text format of every family, as prometheus-client writes it."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        with self._lock:
            return generate_latest(registry)


def write_textfile(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (state.atomic), for node_exporter."""
    ensure_dir(path.parent)
    write_bytes(path, data)
