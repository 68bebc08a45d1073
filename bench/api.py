"""API benchmark: durable submissions per second, SSE latency, a page and /metrics at 100,000 jobs.

    python -m bench.api --json [--quick] [--dir DIR]

Every figure runs a real batchd with the api on 127.0.0.1 (launcher direct, paused so the
jobs stay queued and the machine's two cores serve the api, not the jobs), on fresh state
directories under DIR (default: a temp dir under the current folder). Printed as ONE JSON
object:

- submit_per_s_8_clients: 8 client threads, each on one keep-alive connection, POST one
  job per request for `seconds` (--quick: 2 s); accepted (201, durable) jobs per second.
  The peer figure is fdatasync_per_s, this disk's raw `write + fdatasync` rate (as in
  bench.queue), since every answered POST waited for an fsync'd request file (the api
  writes the POSTs that wait together as one request: submits_per_request says how many).
- sse_latency_ms_p50/p99: a client follows a job's output (Accept: text/event-stream);
  the bench appends one line to the job's output file, as its adaptor would, and times
  the append to the arrival of the event at the client (200 lines; --quick: 50).
- jobs_page_ms_1e5: GET /v1/jobs?limit=100 on 100,000 queued jobs (median of 30), and
  jobs_page_desc_ms_1e5 the newest first.
- metrics_ms_1e5: GET /metrics on the same 100,000 jobs, half of them finished with a
  duration and usage (median of 30, after one warm-up exposition that fills the cache),
  and metrics_cold_ms_1e5 the first one.

Targets: submit >= 2,000/s, SSE p50 <= 20 ms, page <= 50 ms, metrics <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import fdatasync_rate, percentile, stop, until
from supervisor.state.jobcontrol import set_paused
from supervisor.state.layout import Layout
from supervisor.state.queue import JobQueue
from supervisor.state.tokens import add
from tests.httpkit import Client, api_address, read_events

DEADLINE = 120.0

CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
api: {{listen: '127.0.0.1:0'}}
"""


class Daemon:
    """One state dir, a batchd with the api on it, an admin token."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.layout = Layout(root / "state")
        self.config = root / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=root / "state", log=root / "batchd.log"))
        self.token = add(self.layout.tokens_file, "bench", "admin")
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ("127.0.0.1", 0)

    def start(self) -> None:
        set_paused(self.layout, True)       # taken by the scheduler before its first dispatch
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c",
                                      str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def ready() -> tuple[str, int] | None:
            assert self.proc is not None and self.proc.poll() is None, "batchd exited"
            return api_address(self.layout)

        self.address = until("the api", ready, timeout=DEADLINE)

    def client(self) -> Client:
        return Client(self.address, self.token)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, DEADLINE)


def _submit_client(address: tuple[str, int], token: str, end: float) -> int:
    """One client process: POST one job per request on one keep-alive connection until
    `end` (time.time()); how many were accepted (201).

    A lean HTTP/1.1 client on a raw socket (the request's bytes made once, the answer's
    status line and Content-Length read, its body read whole): http.client parses every
    answer's headers with the email package, and on two cores that CPU of the 8 clients
    (about a third of a core at 1,000/s) was taken from the server it measures."""
    body = json.dumps({"agent": "shell", "prompt": "true"}).encode()
    request = (f"POST /v1/jobs HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
               f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    n = 0
    with socket.create_connection(address, timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while time.time() < end:
            sock.sendall(request)
            status, data, buf = _response(sock, buf)
            if status != 201:
                raise RuntimeError(f"{status} {data!r}")
            n += 1
    return n


def _response(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """(status, body, bytes after it) of the next answer on `sock` (`buf`: bytes already
    read); it must carry a Content-Length, as the api's JSON answers do."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the api closed the connection")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                   if line[:15].lower() == b"content-length:"), None)
    if length is None:
        raise RuntimeError(f"an answer without Content-Length: {head!r}")
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the api closed the connection")
        buf += chunk
    return status, buf[:length], buf[length:]


def bench_submit(d: Daemon, seconds: float) -> dict[str, Any]:
    """8 keep-alive clients (processes, so the clients' own Python does not share one
    interpreter lock) POSTing one job each per request."""
    inbox = d.layout.inbox("scheduler")
    requests_before = _requests_taken(d)
    queued = _queued(d)
    with multiprocessing.get_context("fork").Pool(8) as pool:
        start = time.time() + 0.5            # every client connected and going at once
        end = start + seconds
        results = [pool.apply_async(_submit_client, (d.address, d.token, end))
                   for _ in range(8)]
        counts = [r.get(timeout=seconds + DEADLINE) for r in results]
    total = sum(counts)
    until("the scheduler took every submission", lambda: not any(
        n.endswith(".json") for n in os.listdir(inbox)) and _queued(d) >= queued + total,
        timeout=DEADLINE)
    requests = _requests_taken(d) - requests_before
    return {"submit_per_s_8_clients": round(total / (end - start), 1),
            "submits_per_request": round(total / max(requests, 1), 2),
            "submitted": total}


def _queued(d: Daemon) -> int:
    """Jobs in the scheduler's queue now."""
    if not d.layout.wal_dir.exists():
        return 0
    with JobQueue.open(d.layout.wal_dir, readonly=True) as queue:
        return len(queue)


def _requests_taken(d: Daemon) -> int:
    """How many submit requests the scheduler logged (its 'jobs submitted' lines)."""
    log = d.root / "batchd.log"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if '"jobs submitted"' in line)


def bench_sse(d: Daemon, samples: int) -> dict[str, Any]:
    """Append a line to a job's output; time until its event reaches a following client."""
    c = d.client()
    status, body = c.json("POST", "/v1/jobs", {"agent": "shell", "prompt": "true",
                                                "id": "sse-bench"})
    assert status == 201, body
    until("the job known", lambda: c.json("GET", "/v1/jobs/sse-bench")[0] == 200)
    out = d.layout.job_output("sse-bench")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch()
    got: dict[int, float] = {}
    ready = threading.Event()

    def follow() -> None:
        for ev in read_events(d.address, "/v1/jobs/sse-bench/output", d.token, timeout=60):
            now = time.perf_counter()
            if ev.event == "output":
                for line in json.loads(ev.data).splitlines():
                    got[int(line)] = now
            if len(got) >= samples:
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.5)
    ready.set()
    sent: dict[int, float] = {}
    with open(out, "ab", buffering=0) as f:
        for i in range(samples):
            sent[i] = time.perf_counter()
            f.write(f"{i}\n".encode())
            until(f"event {i}", lambda i=i: i in got, timeout=30, poll=0.0005)
            time.sleep(0.02)
    t.join(10)
    lat = [(got[i] - sent[i]) * 1000.0 for i in range(samples)]
    return {"sse_latency_ms_p50": percentile(lat, 50), "sse_latency_ms_p99": percentile(lat, 99)}


def fill(layout: Layout, n: int) -> None:
    """n jobs straight into the WAL (batchd not running yet): half finished, with usage."""
    with JobQueue.open(layout.wal_dir) as q:
        batch = []
        for i in range(n):
            body: dict[str, Any] = {"agent": "shell" if i % 3 else "claude", "prompt": "p",
                                    "repos": [], "batch": f"b{i // 1000}",
                                    "created_at": "2027-01-01T00:00:00.000Z"}
            if i % 2:
                body.update(state="completed", started_at="2027-01-01T00:00:00.000Z",
                            finished_at=f"2027-01-01T00:{i % 60:02d}:00.000Z",
                            usage={"cost_usd": 0.01, "input_tokens": 100,
                                   "output_tokens": 20})
            batch.append((f"job-{i:06d}", body))
            if len(batch) == 5000:
                q.enqueue_many(batch, count="submitted")
                batch = []
        if batch:
            q.enqueue_many(batch, count="submitted")


def _median_ms(c: Client, path: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        status, _, _ = c.request("GET", path)
        times.append((time.perf_counter() - t0) * 1000.0)
        assert status == 200, path
    return round(statistics.median(times), 2)


def bench_big(root: Path, n: int) -> dict[str, Any]:
    d = Daemon(root)
    fill(d.layout, n)
    d.start()
    try:
        c = d.client()
        t0 = time.perf_counter()
        c.request("GET", "/metrics")
        cold = (time.perf_counter() - t0) * 1000.0
        return {"jobs_page_ms_1e5": _median_ms(c, "/v1/jobs?limit=100", 30),
                "jobs_page_desc_ms_1e5": _median_ms(c, "/v1/jobs?limit=100&order=desc", 30),
                "metrics_ms_1e5": _median_ms(c, "/metrics", 30),
                "metrics_cold_ms_1e5": round(cold, 2), "jobs": n}
    finally:
        d.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--dir", help="where the state dirs go (default: a temp dir here)")
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-api.", dir=args.dir or ".")).resolve()
    out: dict[str, Any] = {}
    try:
        out["fdatasync_per_s"] = fdatasync_rate(base)
        d = Daemon(base / "submit")
        d.start()
        try:
            out.update(bench_submit(d, 2.0 if args.quick else 5.0))
            out.update(bench_sse(d, 50 if args.quick else 200))
        finally:
            d.stop()
        out.update(bench_big(base / "big", 20_000 if args.quick else 100_000))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
