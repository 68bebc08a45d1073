"""Supervision benchmark: worker restart latency vs supervisord's, and batchd's idle CPU.

    python -m bench.supervisor --json [--quick]

- restart_ms_p50/p99: SIGKILL of a batchd worker until its replacement's ready record
  (ready/<worker>.json with the NEW pid) appears, i.e. restart AND recovery done; the
  four workers in turn, 100 kills (--quick: 20), each once the worker is RUNNING again.
- supervisord_restart_ms_p50/p99: the same kill against supervisord 4.x (the PyPI package
  `supervisor`, installed into a SEPARATE venv, ./.bench-venv by default, since it shares
  batchd's import name) running one `sleep 1000` program with autorestart=true and
  startsecs=0: SIGKILL the child, time until supervisord's child pid changes (the process
  table polled every 1 ms). supervisord only has to fork+exec; batchd's figure includes
  the worker's recovery, so the comparison is conservative.
- idle_cpu_percent: utime+stime of batchd and its four workers over 30 s of idleness
  (--quick: 10 s), from /proc/<pid>/stat, as a percentage of one core.

Targets: restart p99 <= 100 ms, p50 <= 0.05 x supervisord's p50, idle CPU <= 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import percentile, stop, until
from supervisor.config import WORKER_NAMES
from supervisor.state.layout import READY, WORKERS, Layout, read_record
from supervisor.state.proc import alive

NAMES = WORKER_NAMES
POLL = 0.001
DEADLINE = 60.0


# --------------------------------------------------------------------------- batchd

def _batchd_config(state: Path) -> str:
    worker = "{startsecs: 0.05, startretries: 3, stopwaitsecs: 5, max_restarts: 100000}"
    return (f"state_dir: {state}\nlog: {{level: warning, format: json}}\nworkers:\n"
            + "".join(f"  {n}: {worker}\n" for n in NAMES))


def _workers(layout: Layout, batchd_pid: int) -> dict[str, dict[str, Any]]:
    rec = read_record(WORKERS, layout.workers_file, owner=False)
    if not isinstance(rec, dict) or rec.get("batchd_pid") != batchd_pid:
        return {}
    return {w["name"]: w for w in rec["workers"]}


def _all_running(layout: Layout, batchd_pid: int) -> dict[str, dict[str, Any]] | None:
    w = _workers(layout, batchd_pid)
    if w and all(w[n]["state"] == "RUNNING" for n in NAMES):
        return w
    return None


def _ready_pid(layout: Layout, name: str) -> int | None:
    rec = read_record(READY, layout.ready_file(name), owner=False)
    return rec.get("pid") if isinstance(rec, dict) else None


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return int(rest[11]) + int(rest[12])          # utime + stime (fields 14, 15)


def bench_batchd(kills: int, idle_s: float, work: Path) -> dict[str, Any]:
    layout = Layout(work / "state")
    cfg = work / "batchd.yaml"
    cfg.write_text(_batchd_config(layout.root))
    log = open(work / "batchd.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c", str(cfg)],
                            stdout=log, stderr=log)
    try:
        until("batchd running", lambda: _all_running(layout, proc.pid), timeout=DEADLINE,
              poll=0.01)
        samples: list[float] = []
        per_worker: dict[str, list[float]] = {n: [] for n in NAMES}
        for i in range(kills):
            name = NAMES[i % len(NAMES)]
            before = until("all RUNNING", lambda: _all_running(layout, proc.pid),
                           timeout=DEADLINE, poll=0.005)
            old = before[name]["pid"]
            t0 = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            until(f"{name} ready again",
                  lambda n=name, o=old: (p := _ready_pid(layout, n)) is not None and p != o,
                  timeout=DEADLINE, poll=POLL)
            ms = (time.perf_counter() - t0) * 1000.0
            samples.append(ms)
            per_worker[name].append(ms)
        workers = until("all RUNNING", lambda: _all_running(layout, proc.pid),
                        timeout=DEADLINE, poll=0.01)
        time.sleep(1.0)                       # let the last restart's follow-up settle
        pids = [proc.pid] + [workers[n]["pid"] for n in NAMES]
        t0, ticks0 = time.monotonic(), sum(_cpu_ticks(p) for p in pids)
        time.sleep(idle_s)
        t1, ticks1 = time.monotonic(), sum(_cpu_ticks(p) for p in pids)
        restarted = [n for n in NAMES
                     if not alive(workers[n]["pid"], workers[n]["start"])]
        idle = (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100.0
        return {
            "restart_ms_p50": percentile(samples, 50),
            "restart_ms_p99": percentile(samples, 99),
            "restart_ms_max": round(max(samples), 2),
            "restart_kills": kills,
            "restart_ms_p50_by_worker": {n: percentile(v, 50) for n, v in per_worker.items()},
            "idle_cpu_percent": round(idle, 3),
            "idle_seconds": round(t1 - t0, 1),
            "idle_workers_restarted": restarted,
        }
    finally:
        stop(proc)
        log.close()


# --------------------------------------------------------------------------- supervisord

_SUPERVISORD_CONF = """\
[unix_http_server]
file={work}/supervisor.sock

[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
childlogdir={work}
loglevel=warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{work}/supervisor.sock

[program:sleeper]
command=sleep 1000
autorestart=true
startsecs=0
startretries=1000
stdout_logfile=NONE
stderr_logfile=NONE
"""


def ensure_supervisord(venv: Path) -> Path:
    """supervisord 4.x in its own venv (it is the `supervisor` import package too)."""
    binary = venv / "bin" / "supervisord"
    if not binary.exists():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "supervisor>=4,<5"], check=True, env=env, stdout=subprocess.DEVNULL)
    return binary


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def bench_supervisord(kills: int, venv: Path, work: Path) -> dict[str, Any]:
    binary = ensure_supervisord(venv)
    conf = work / "supervisord.conf"
    conf.write_text(_SUPERVISORD_CONF.format(work=work))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # not OUR `supervisor`
    proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=work, env=env)
    try:
        samples: list[float] = []
        for _ in range(kills):
            old = until("supervisord's child", lambda: _children(proc.pid), timeout=DEADLINE,
                        poll=0.01)[0]
            time.sleep(0.05)
            t0 = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            until("supervisord's new child",
                  lambda o=old: [c for c in _children(proc.pid) if c != o],
                  timeout=DEADLINE, poll=POLL)
            samples.append((time.perf_counter() - t0) * 1000.0)
        return {
            "supervisord_restart_ms_p50": percentile(samples, 50),
            "supervisord_restart_ms_p99": percentile(samples, 99),
            "supervisord_kills": kills,
        }
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.supervisor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="20 kills, 10 s idle")
    parser.add_argument("--kills", type=int, help="kills per system (default 100; quick 20)")
    parser.add_argument("--idle", type=float, help="idle seconds (default 30; quick 10)")
    parser.add_argument("--venv", default=os.environ.get("BATCHD_BENCH_VENV", ".bench-venv"),
                        help="where supervisord's venv is kept (default ./.bench-venv)")
    args = parser.parse_args(argv)
    kills = args.kills or (20 if args.quick else 100)
    idle = args.idle or (10.0 if args.quick else 30.0)
    result: dict[str, Any] = {"benchmark": "supervisor", "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="batchd-bench-") as tmp:
        work = Path(tmp)
        (work / "b").mkdir()
        (work / "s").mkdir()
        result.update(bench_batchd(kills, idle, work / "b"))
        try:
            result.update(bench_supervisord(kills, Path(args.venv).resolve(), work / "s"))
        except (OSError, subprocess.CalledProcessError, TimeoutError) as exc:
            result.update({"supervisord_restart_ms_p50": None,
                           "supervisord_restart_ms_p99": None,
                           "supervisord_error": f"{type(exc).__name__}: {exc}"})
    sup = result.get("supervisord_restart_ms_p50")
    result["targets"] = {
        "restart_ms_p99 <= 100": result["restart_ms_p99"] <= 100.0,
        "restart_ms_p50 <= 0.05 x supervisord p50":
            None if sup is None else result["restart_ms_p50"] <= 0.05 * sup,
        "idle_cpu_percent <= 1": result["idle_cpu_percent"] <= 1.0,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
