"""Webhooks benchmark: job end to delivered, throughput, a hanging receiver, start at 100k.

    python -m bench.callbacks --json [--quick] [--dir DIR]

Printed as ONE JSON object. Receivers are real HTTP servers in this process on 127.0.0.1
(HTTP/1.1, keep-alive, asyncio), each answering 200 at once unless said otherwise.

- complete_to_delivered_ms_p50/p99: a real batchd (launcher direct) runs 100 jobs of
  `true` (--quick: 40) one after another, each with --callback to a local receiver; each
  figure is the receiver's arrival time minus the job's end (`finished_at` of the
  adaptor's result, carried in the event's job record; ms resolution). The path: the
  adaptor's exit hint, the scheduler's finalize (event written before the WAL record),
  the callbacks worker's inbox hint, its record, a sending thread's in_flight write, the
  POST.
- deliveries_per_s: the callbacks worker (`python -m supervisor.callbacks`) is stopped
  (SIGSTOP) while 2,000 job events (--quick: 500) for one local receiver are dropped into
  its inbox as the scheduler drops them; from SIGCONT until every record is delivered on
  disk (in callbacks/done/): intake, 4 in flight to the one receiver, every write durable.
  Beside it the disk's raw fdatasync rate just before and after (its ceiling: a delivery
  is two durable records).
- others_delayed_ms: callbacks.timeout 2 s; 60 events (--quick: 30) to a fast receiver,
  one every 20 ms, timed from the drop to the arrival: once alone (baseline), once right
  after 20 events to a receiver that holds every POST for longer than the timeout (it is
  then holding 4, the per-host limit, for the whole run). The figure is the p50 extra
  delay of the fast receiver's events (the p99 one beside it); before deliveries were
  concurrent it was the whole timeout.
- start_ms_100k_outbox: 100,000 delivery records (1,000 pending, due in an hour; 99,000
  delivered or failed, in callbacks/done/) under a real batchd; the callbacks worker is
  SIGKILLed 5 times and each time the wall time until its replacement's ready record is
  taken (batchd's fork, the worker's imports, its recovery): the p50, with the recovery's
  own duration beside it.

Targets: p50 <= 20 ms, >= 500 deliveries/s, others delayed < 100 ms, start <= 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench._common import fdatasync_rate, percentile, stop, until
from supervisor import log as _log
from supervisor.config import LogConfig
from supervisor.state.atomic import dump_json
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.layout import DELIVERY, READY, Layout, read_record
from supervisor.state.proc import alive
from supervisor.state.submission import Checker, Known, assign_ids, write_submission
from supervisor.state.webhook import (
    begin,
    delivery_request,
    drop_request,
    job_event_id,
    job_payload,
    new_delivery,
)

DEADLINE = 120.0
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}

CONFIG = """\
state_dir: {state}
log: {{level: warning, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: 4, heartbeat_interval: 1, stale_after: 10, dead_after: 30,
            kill_grace: 1}}
callbacks: {{timeout: {timeout}, retry_schedule: [1s, 1s]}}
workers: {{callbacks: {{startsecs: 0}}}}
"""


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1 (port 0), keep-alive, on an asyncio loop in a
    thread of this process (light: the worker, not the receiver, is measured). Each POST
    is noted as (path, body, arrival time.time()) and answered 200 after `hold` seconds."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.hits: list[tuple[str, bytes, float]] = []
        self.arrived: dict[str, float] = {}          # Idempotency-Key -> first arrival
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.url = ""

        handlers: set[asyncio.Task[Any]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                handlers.add(task)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    now = time.time()
                    lines = head.decode("latin-1").split("\r\n")
                    path = lines[0].split(" ")[1]
                    fields = {k.strip().lower(): v.strip() for k, _, v in
                              (line.partition(":") for line in lines[1:] if line)}
                    body = await reader.readexactly(int(fields.get("content-length", "0")))
                    self.hits.append((path, body, now))
                    self.arrived.setdefault(fields.get("idempotency-key", ""), now)
                    if self.hold:
                        await asyncio.sleep(self.hold)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError,
                    asyncio.CancelledError):
                writer.close()
            finally:
                if task is not None:
                    handlers.discard(task)

        async def serve() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            ready.set()
            async with server:
                with contextlib.suppress(asyncio.CancelledError):
                    await server.serve_forever()
            for task in list(handlers):        # connections still open: end them too
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),),
                                       daemon=True)
        self.thread.start()
        ready.wait(DEADLINE)

    def close(self) -> None:
        def cancel() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def receiving(hold: float = 0.0) -> Iterator[Receiver]:
    rcv = Receiver(hold)
    try:
        yield rcv
    finally:
        rcv.close()


class Place:
    """A state dir with its config."""

    def __init__(self, root: Path, *, timeout: str = "30s") -> None:
        root.mkdir(parents=True)
        self.root = root
        self.config = root / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=root / "state", log=root / "batchd.log",
                                             timeout=timeout))
        self.layout = Layout(root / "state")

    def ready_pid(self, worker: str, other_than: int = 0) -> int | None:
        rec = read_record(READY, self.layout.ready_file(worker), owner=False)
        if isinstance(rec, dict) and rec["pid"] != other_than and alive(rec["pid"],
                                                                         rec["start"]):
            return int(rec["pid"])
        return None

    def ready_record(self, worker: str) -> dict[str, Any]:
        rec = read_record(READY, self.layout.ready_file(worker), owner=False)
        assert isinstance(rec, dict)
        return rec

    def batchd(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c",
                                 str(self.config)], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def worker(self) -> subprocess.Popen[bytes]:
        """The callbacks worker alone (`python -m supervisor.callbacks`), once ready."""
        old = self.ready_pid("callbacks") or 0
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.callbacks", "-c",
                                 str(self.config)], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until("the callbacks worker ready", lambda: self.ready_pid("callbacks", old))
        return proc

    def drop(self, url: str, job: str) -> str:
        """A job event into the callbacks inbox, exactly as the scheduler drops one."""
        eid = job_event_id(job, iso_now())
        payload = job_payload(eid, {"id": job, "state": "completed", "exit_code": 0})
        drop_request(self.layout, delivery_request(eid, url, payload, job=job))
        return eid

    def delivered(self) -> int:
        try:
            return len(os.listdir(self.layout.callbacks_done))
        except FileNotFoundError:
            return 0


def bench_complete_to_delivered(root: Path, n: int) -> dict[str, Any]:
    """n `true` jobs with a callback, one at a time: job end -> arrival at the receiver."""
    place = Place(root)
    proc = place.batchd()
    lat: list[float] = []
    handed: list[float] = []
    try:
        until("batchd ready", lambda: place.ready_pid("callbacks") and place.ready_pid(
            "scheduler"))
        checker = Checker(Known(agents=frozenset({"shell"}), repos=frozenset(),
                                ids=frozenset()))
        with receiving() as rcv:
            for i in range(n):
                jobs = [checker.check({"agent": "shell", "prompt": "true", "id": f"cb-{i}",
                                       "callback": f"{rcv.url}/hook"})]
                assign_ids(jobs, frozenset())
                write_submission(place.layout, jobs)
                until(f"the event of job cb-{i}", lambda k=i: len(rcv.hits) > k, poll=0.001)
            for _, body, at in rcv.hits:
                event = json.loads(body)
                ended = parse_iso(event["job"]["finished_at"])
                assert ended is not None
                lat.append((at - ended) * 1000.0)
                rec = read_record(DELIVERY, place.layout.callbacks_done
                                  / f"{event['event_id']}.json", owner=False)
                made = parse_iso(rec.get("created_at")) if isinstance(rec, dict) else None
                if made is not None:
                    handed.append((at - made) * 1000.0)
    finally:
        stop(proc, DEADLINE)
    return {"complete_to_delivered_ms_p50": percentile(lat, 50),
            "complete_to_delivered_ms_p99": percentile(lat, 99),
            "complete_to_delivered_ms_max": round(max(lat), 2),
            # the callbacks worker's part: the scheduler's hand-over (the request's
            # created_at, ms) -> arrival
            "handed_to_delivered_ms_p50_p99": [percentile(handed, 50),
                                               percentile(handed, 99)],
            "complete_to_delivered_jobs": n}


def fdatasync_per_s(folder: Path, seconds: float = 1.0) -> int:
    """The disk's raw rate, here and now (bench._common.fdatasync_rate), as a whole number."""
    return round(fdatasync_rate(folder, seconds))


def bench_throughput(root: Path, n: int) -> dict[str, Any]:
    """n events for one receiver waiting in the inbox of a stopped worker; SIGCONT until
    every record is delivered on disk. Each delivery is two durable records (in_flight
    before the POST, the outcome after it): four fsyncs, some shared between threads, so
    the disk's fdatasync rate, measured just before and after, is the figure's ceiling."""
    place = Place(root)
    before = fdatasync_per_s(place.root)
    with receiving() as rcv:
        proc = place.worker()
        try:
            proc.send_signal(signal.SIGSTOP)
            for i in range(n):
                place.drop(f"{rcv.url}/hook", f"tp-{i}")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGCONT)
            until("every event delivered", lambda: place.delivered() >= n, poll=0.005)
            took = time.monotonic() - t0
            received = len(rcv.arrived)
        finally:
            proc.send_signal(signal.SIGCONT)
            stop(proc, DEADLINE)
    assert received == n, f"{received} of {n} events arrived"
    after = fdatasync_per_s(place.root)
    return {"deliveries_per_s": round(n / took), "deliveries": n,
            "deliveries_s": round(took, 3),
            "fdatasync_per_s_before_after": [before, after]}


def _stream(place: Place, rcv: Receiver, n: int, tag: str) -> list[float]:
    """n events to `rcv`, one every 20 ms; each one's drop -> arrival, in ms."""
    dropped: dict[str, float] = {}
    for i in range(n):
        t = time.time()
        dropped[place.drop(f"{rcv.url}/fast", f"{tag}-{i}")] = t
        time.sleep(0.02)
    until(f"the {tag} events", lambda: all(e in rcv.arrived for e in dropped), poll=0.002)
    return [(rcv.arrived[e] - t) * 1000.0 for e, t in dropped.items()]


def bench_others_delayed(root: Path, n: int) -> dict[str, Any]:
    """The fast receiver's latency alone, then beside a receiver that hangs past the timeout."""
    place = Place(root, timeout="2s")
    with receiving() as fast, receiving(hold=3.0) as slow:
        proc = place.worker()
        try:
            alone = _stream(place, fast, n, "alone")
            for i in range(20):
                place.drop(f"{slow.url}/hang", f"hang-{i}")
            until("the hanging receiver holding 4", lambda: len(slow.hits) >= 4)
            beside = _stream(place, fast, n, "beside")
            held = len(slow.hits)
        finally:
            stop(proc, DEADLINE)
    return {"others_delayed_ms": round(max(0.0, percentile(beside, 50)
                                           - percentile(alone, 50)), 2),
            "others_delayed_ms_p99": round(max(0.0, percentile(beside, 99)
                                               - percentile(alone, 99)), 2),
            "others_alone_ms_p50_p99": [percentile(alone, 50), percentile(alone, 99)],
            "others_beside_ms_p50_p99": [percentile(beside, 50), percentile(beside, 99)],
            "hanging_posts_meanwhile": held}


def _fill_outbox(layout: Layout, total: int, live: int) -> None:
    """`total` records: `live` pending (due in an hour) in outbox/, the rest settled in
    done/ (half delivered, half failed). Written plainly: set-up, not measured."""
    now = time.time()
    for folder in (layout.callbacks_outbox, layout.callbacks_done):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(total):
        eid = job_event_id(f"old-{i}")
        req = delivery_request(eid, "http://127.0.0.1:9/hook",
                               job_payload(eid, {"id": f"old-{i}", "state": "completed"}),
                               job=f"old-{i}", now=now - 3600)
        rec = new_delivery(req, now - 3600)
        if i < live:
            rec["next_attempt_at"] = iso_now(now + 3600)
            folder = layout.callbacks_outbox
        else:
            rec = {**begin(rec, now - 3600), "next_attempt_at": None,
                   "state": "delivered" if i % 2 else "failed"}
            folder = layout.callbacks_done
        (folder / f"{eid}.json").write_bytes(dump_json({**rec, "schema": "batchd.delivery",
                                                        "v": 1}))


def bench_start(root: Path, total: int, live: int, kills: int) -> dict[str, Any]:
    """The callbacks worker's restart under batchd with `total` outbox records."""
    place = Place(root)
    _fill_outbox(place.layout, total, live)
    proc = place.batchd()
    walls: list[float] = []
    try:
        until("the callbacks worker ready", lambda: place.ready_pid("callbacks"))
        first = place.ready_record("callbacks")
        for _ in range(kills):
            pid = place.ready_pid("callbacks")
            assert pid is not None
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            until("its replacement ready", lambda p=pid: place.ready_pid("callbacks", p),
                  poll=0.0005)
            walls.append((time.monotonic() - t0) * 1000.0)
        last = place.ready_record("callbacks")
    finally:
        stop(proc, DEADLINE)
    assert last["found"]["pending"] == live, last["found"]
    return {f"start_ms_{total // 1000}k_outbox": percentile(walls, 50),
            "start_ms_max": round(max(walls), 1),
            "start_recovery_ms": last["duration_ms"],
            "start_first_recovery_ms": first["duration_ms"],
            "start_records": {"total": total, "live": live}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callbacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer events (under a minute)")
    parser.add_argument("--dir", help="where the state dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    _log.setup(LogConfig(level="warning"), name="bench")
    base = Path(tempfile.mkdtemp(prefix="bench-callbacks-", dir=args.dir))
    steps: list[Callable[[], dict[str, Any]]] = [
        lambda: bench_complete_to_delivered(base / "latency", 40 if args.quick else 100),
        lambda: bench_throughput(base / "throughput", 500 if args.quick else 2000),
        lambda: bench_others_delayed(base / "hanging", 30 if args.quick else 60),
        lambda: bench_start(base / "start", 100_000, 1_000, 5),
    ]
    try:
        out: dict[str, Any] = {"quick": args.quick}
        for step in steps:
            out.update(step())
        out["targets"] = {"complete_to_delivered_ms_p50": 20, "deliveries_per_s": 500,
                          "others_delayed_ms": 100, "start_ms_100k_outbox": 500}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
