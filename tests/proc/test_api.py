"""The api as batchd runs it: real batchd, real jobs, real HTTP, real SIGKILLs.

A job submitted over HTTP runs and its output streams (SSE) to the end; the api worker and
batchd itself are SIGKILLed mid-stream and the client, reconnecting with Last-Event-ID,
gathers exactly the bytes `batchctl output` prints; 100 clients at once; a busy address
leaves batchd degraded, not down; a reload turns the api on and off; a unix socket; the
metrics textfile without the api.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.layout import STARTUP_LOG, WORKERS, Layout, read_record
from supervisor.state.queue import JobQueue
from tests.helpers import until
from tests.httpkit import Client, api_address, config_text, make_tokens, read_events

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


class Batchd:
    """A batchd with the api on, its state dir, tokens, and batchctl."""

    def __init__(self, tmp_path: Path, *, listen: str = "127.0.0.1:0", extra: str = "") -> None:
        self.root = tmp_path
        self.cfg = tmp_path / "batchd.yaml"
        self.cfg.write_text(config_text(tmp_path / "state", listen=listen, extra=extra))
        self.layout = Layout(tmp_path / "state")
        self.tokens = make_tokens(self.cfg)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_api: bool = True) -> Batchd:
        with open(self.root / "batchd.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c",
                                          str(self.cfg)], stdout=log, stderr=log)
        if wait_api:
            self.api_address()
        return self

    def workers(self) -> dict[str, dict[str, Any]]:
        rec = read_record(WORKERS, self.layout.workers_file, owner=False)
        if not isinstance(rec, dict) or self.proc is None or rec.get("batchd_pid") != self.proc.pid:
            return {}
        return {w["name"]: w for w in rec["workers"]}

    def api_pid(self) -> int:
        return self.worker_pid("api")

    def worker_pid(self, name: str) -> int:
        def running() -> int | None:
            w = self.workers().get(name)
            return w["pid"] if w and w["state"] == "RUNNING" else None
        pid: int = until(f"the {name} RUNNING", running, DEADLINE)
        return pid

    def api_address(self) -> tuple[str, int]:
        pid = self.api_pid()
        address: tuple[str, int] = until("the api's address",
                                         lambda: api_address(self.layout, pid), DEADLINE)
        return address

    def client(self, scope: str = "admin") -> Client:
        return Client(self.api_address(), self.tokens[scope])

    def ctl(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(self.cfg),
                               *argv], capture_output=True, check=False, timeout=DEADLINE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def batchd(tmp_path: Path) -> Iterator[Batchd]:
    b = Batchd(tmp_path)
    try:
        yield b
    finally:
        b.kill()
        _end_jobs(b)


def _end_jobs(b: Batchd) -> None:
    """The jobs outlive batchd by design: end those still running, by their process group."""
    from supervisor.config import load
    from supervisor.state.view import open_view

    with open_view(load(str(b.cfg)), b.layout) as view:
        pids = [e.get("pid") for e in view.entries() if e.get("state") in ("starting",
                                                                           "running")]
    for pid in pids:
        if isinstance(pid, int):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                continue


def _submit(c: Client, prompt: str, **extra: Any) -> str:
    status, body = c.json("POST", "/v1/jobs", {"agent": "shell", "prompt": prompt, **extra})
    assert 201 == status, body
    job_id: str = body["ids"][0]
    return job_id


def _state(c: Client, job_id: str) -> str:
    status, rec = c.json("GET", f"/v1/jobs/{job_id}")
    assert 200 == status, rec
    return str(rec["state"])


def _gather(b: Batchd, job_id: str, *, kill_after: int | None = None,
            kill: Any = None) -> tuple[bytes, list[str]]:
    """Follow the job's output over SSE to its `end` event, reconnecting with the last
    event id whenever the stream breaks; `kill()` is called once `kill_after` output events
    came. The bytes gathered, and the event ids seen."""
    got: list[str] = []
    ids: list[str] = []
    last: str | None = None
    events = 0
    killed = False
    deadline = time.monotonic() + DEADLINE * 2
    while time.monotonic() < deadline:
        try:
            for ev in read_events(b.api_address(), f"/v1/jobs/{job_id}/output",
                                  b.tokens["read"], last_event_id=last, timeout=10):
                if ev.event == "end":
                    assert last is None or ev.id == last
                    return "".join(got).encode(), ids
                assert "output" == ev.event
                got.append(json.loads(ev.data))
                last = ev.id
                ids.append(str(ev.id))
                events += 1
                if kill_after is not None and events >= kill_after and not killed:
                    killed = True
                    kill()
        except (OSError, AssertionError, ValueError):
            time.sleep(0.2)
            continue
    raise AssertionError("the stream never ended")


SLOW = "i=0; while [ $i -lt 30 ]; do echo \"line $i é\"; i=$((i+1)); sleep 0.1; done"


def test_a_job_submitted_over_http_completes_and_its_stream_equals_batchctl_output(
        batchd: Batchd) -> None:
    """POST, follow the SSE stream to `end`: the bytes equal `batchctl output`, ids are
    the byte offsets, the record says completed."""
    b = batchd.start()
    c = b.client()
    job_id = _submit(c, SLOW)
    data, ids = _gather(b, job_id)
    assert "completed" == _state(c, job_id)
    assert b.ctl("output", job_id).stdout == data
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    assert len(data) == int(ids[-1])


def test_sigkill_of_the_api_mid_stream_loses_no_byte_and_repeats_none(batchd: Batchd) -> None:
    """The api worker SIGKILLed while a client follows: batchd restarts it, the client
    reconnects with Last-Event-ID and gathers exactly `batchctl output`."""
    b = batchd.start()
    job_id = _submit(b.client(), SLOW)
    pid = b.api_pid()
    data, _ = _gather(b, job_id, kill_after=5, kill=lambda: os.kill(pid, signal.SIGKILL))
    assert b.api_pid() != pid
    until("completed", lambda: _state(b.client(), job_id) == "completed")
    assert b.ctl("output", job_id).stdout == data


def test_sigkill_of_batchd_mid_stream_loses_no_byte(batchd: Batchd) -> None:
    """batchd SIGKILLed (its workers die with it; the job does not): a new batchd starts,
    the client reconnects to the new api and gathers exactly `batchctl output`."""
    b = batchd.start()
    job_id = _submit(b.client(), SLOW)

    def crash() -> None:
        b.kill()
        b.start(wait_api=False)

    data, _ = _gather(b, job_id, kill_after=5, kill=crash)
    until("completed", lambda: _state(b.client(), job_id) == "completed")
    assert b.ctl("output", job_id).stdout == data


def test_a_hundred_clients_at_once(batchd: Batchd) -> None:
    """100 clients, each on its own keep-alive connection: submit, read the record, follow
    a shared job's stream to the end. Every request succeeds; every stream is whole."""
    b = batchd.start()
    shared = _submit(b.client(), "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done")
    address = b.api_address()
    errors: list[str] = []
    streams: list[bytes] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        try:
            c = Client(address, b.tokens["submit"])
            job_id = _submit(c, f"echo client {n}", batch="hundred")
            status, rec = c.json("GET", f"/v1/jobs/{job_id}")
            assert (200, job_id) == (status, rec["id"])
            text = "".join(json.loads(ev.data) for ev in read_events(
                address, f"/v1/jobs/{shared}/output", b.tokens["read"]) if ev.event == "output")
            with lock:
                streams.append(text.encode())
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(f"{n}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert [] == errors
    expected = b.ctl("output", shared).stdout
    assert [expected] * 100 == streams
    c = b.client()
    until("100 jobs in the batch", lambda: len(c.json("GET", "/v1/batches/hundred")[1]["jobs"])
          == 100)


def test_an_api_that_cannot_listen_leaves_batchd_running_degraded(tmp_path: Path) -> None:
    """The address is taken: the api fails its starts and goes FATAL; batchd keeps
    running, `status` names the api in degraded, the startup log records the failure."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    b = Batchd(tmp_path, listen=f"127.0.0.1:{port}")
    try:
        b.start(wait_api=False)
        until("api FATAL", lambda: b.workers().get("api", {}).get("state") == "FATAL", DEADLINE)
        status = json.loads(b.ctl("status", "--json").stdout)
        assert status["batchd"]["running"] is True
        assert any(note.startswith("api: ") for note in status["degraded"])
        assert "RUNNING" == b.workers()["scheduler"]["state"]
        log = read_record(STARTUP_LOG, b.layout.startup_log, owner=False)
        assert isinstance(log, dict)
        [api_phase] = [p for p in log["startups"][-1]["phases"] if p["worker"] == "api"]
        assert (False, "degraded") == (api_phase["ok"], log["startups"][-1]["outcome"])
        assert "cannot listen" in (tmp_path / "batchd.log").read_text()
    finally:
        b.kill()
        taken.close()


def test_a_reload_turns_the_api_on_and_off(tmp_path: Path) -> None:
    """No api.listen: no api worker, none listed. A reload that sets it starts the api;
    one that clears it stops it and it leaves the list."""
    b = Batchd(tmp_path)
    text = b.cfg.read_text()
    b.cfg.write_text(text.replace("api: {listen: '127.0.0.1:0'}", ""))
    try:
        b.start(wait_api=False)
        until("workers up", lambda: b.workers().get("callbacks", {}).get("state") == "RUNNING")
        assert "api" not in b.workers()
        b.cfg.write_text(text)
        done = b.ctl("reload", "--json")
        assert 0 == done.returncode, done.stderr
        assert ["api"] == json.loads(done.stdout)["result"]["started"]
        assert 200 == b.client("read").json("GET", "/v1/status")[0]
        b.cfg.write_text(text.replace("api: {listen: '127.0.0.1:0'}", ""))
        done = b.ctl("reload", "--json")
        assert ["api"] == json.loads(done.stdout)["result"]["stopped"]
        until("api gone from the list", lambda: "api" not in b.workers())
        assert 1 == b.ctl("start", "api").returncode
    finally:
        b.kill()


def test_a_unix_socket_listens_with_mode_0660(tmp_path: Path) -> None:
    """api.listen: unix:/path makes a socket with mode 0660 that answers HTTP."""
    path = tmp_path / "run" / "api.sock"
    b = Batchd(tmp_path, listen=f"unix:{path}")
    try:
        b.start(wait_api=False)
        b.api_pid()
        assert 0o660 == stat.S_IMODE(os.stat(path).st_mode)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Authorization: Bearer " + b.tokens["read"].encode() + b"\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(b'{"name":"read","scope":"read"}')
    finally:
        b.kill()


def test_the_metrics_textfile_is_written_without_the_api(tmp_path: Path) -> None:
    """metrics.textfile with no api.listen: the reaper writes the same text format (into
    a folder that exists: batchd refuses to start with one that does not)."""
    prom = tmp_path / "textfile" / "batchd.prom"
    prom.parent.mkdir()
    b = Batchd(tmp_path, extra=f"metrics: {{textfile: {prom}}}\n")
    b.cfg.write_text(b.cfg.read_text().replace("api: {listen: '127.0.0.1:0'}", ""))
    try:
        b.start(wait_api=False)
        text = until("the textfile", lambda: prom.exists() and prom.read_text())
        assert "# TYPE batchd_jobs gauge" in text
        assert 'batchd_worker_up{worker="scheduler"}' in text
        assert [] == [n for n in os.listdir(prom.parent) if n.startswith(".tmp.")]
    finally:
        b.kill()


def test_pause_over_http_holds_new_jobs_until_resume(batchd: Batchd) -> None:
    """POST /v1/pause: a job submitted then stays queued (status says paused) across a
    batchd restart; POST /v1/resume: it runs."""
    b = batchd.start()
    c = b.client()
    assert 202 == c.json("POST", "/v1/pause")[0]
    until("paused on disk", b.layout.paused_file.exists)
    job_id = _submit(c, "echo later")
    time.sleep(1.0)
    assert "queued" == _state(c, job_id)
    b.stop()
    b.start()
    c = b.client()
    assert c.json("GET", "/v1/status")[1]["paused"] is True
    time.sleep(0.5)
    assert "queued" == _state(c, job_id)
    assert 202 == c.json("POST", "/v1/resume")[0]
    until("completed", lambda: _state(c, job_id) == "completed")


def test_sigkill_of_the_api_under_submissions_loses_no_acknowledged_job(
        batchd: Batchd) -> None:
    """8 clients POST jobs with ids of their own as fast as they can while the api worker
    is SIGKILLed twice (with log appends in flight) and the scheduler once between (while
    it enqueues the log's records); a POST whose connection breaks is
    retried with the same id against the restarted api. Every id answered 201 (first try
    or retry) reaches the queue from the api's submission log and is there exactly once
    (`batchctl jobs`), a retry is never a conflict, and nothing was quarantined."""
    from supervisor.state.jobcontrol import set_paused

    b = batchd
    set_paused(b.layout, True)               # the jobs stay queued: the api gets the cores
    b.start()
    per_client, acked = 40, [0]
    answered: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        c = Client(b.api_address(), b.tokens["submit"])
        for i in range(per_client):
            job_id = f"k{n}-{i}"
            body = {"agent": "shell", "prompt": f"echo {job_id}", "id": job_id}
            for _ in range(200):
                try:
                    status, got = c.json("POST", "/v1/jobs", body)
                except (OSError, http.client.HTTPException):   # the api died: retry, same id
                    c.close()
                    time.sleep(0.05)
                    c = Client(b.api_address(), b.tokens["submit"])
                    continue
                if status == 503:               # a write cut by the kill? retry
                    time.sleep(0.05)
                    continue
                with lock:
                    if status != 201:
                        errors.append(f"{job_id}: {status} {got}")
                    else:
                        answered[job_id] = answered.get(job_id, 0) + 1
                        acked[0] += 1
                break

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for kill_at, worker in ((60, "api"), (110, "scheduler"), (160, "api")):
        until(f"{kill_at} submissions answered", lambda k=kill_at: acked[0] >= k, DEADLINE)
        pid = b.worker_pid(worker)
        os.kill(pid, signal.SIGKILL)
        until(f"the {worker} replaced", lambda p=pid, w=worker: b.worker_pid(w) != p,
              DEADLINE)
    for t in threads:
        t.join(DEADLINE * 2)
    assert [] == errors
    assert 8 * per_client == len(answered)
    inbox = b.layout.inbox("scheduler")

    def enqueued() -> set[str]:
        with JobQueue.open(b.layout.wal_dir, readonly=True) as queue:
            return set(queue.ids())

    until("the scheduler enqueued every answered job (log and inbox)",
          lambda: set(answered) <= enqueued(), DEADLINE)
    listing = b.ctl("jobs", "--json")
    assert 0 == listing.returncode, listing.stderr
    queued = sorted(j["id"] for j in json.loads(listing.stdout))
    assert sorted(answered) == queued
    assert [] == [p.name for p in inbox.iterdir() if ".corrupted." in p.name]
