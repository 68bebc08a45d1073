"""slurmlab: a real, single-host Slurm cluster that a test can start and stop.

Copied from the Slurm lab (its NOTES.md has the measurements); stdlib only. Built and
measured against Debian 12's slurm-wlm 22.05.8 + munge 0.5.15, running as root in a
container without systemd.

    from slurmlab import SlurmCluster, available
    if (why := available()) is not None:
        pytest.skip(why)
    with SlurmCluster("/tmp/slurm0") as cluster:        # start() ... stop()
        job_id = cluster.sbatch("--wrap", "echo hi")
        cluster.wait_state(job_id, {"COMPLETED"})
        env = cluster.env()                               # SLURM_CONF=... for your own clients

Every file the cluster writes (munge key and socket, slurm.conf, state, spool, logs, pid
files, the jobcomp file) lives under ``root_dir``.  The daemons are children of this
process, each in a session (and so a process group) of its own; ``stop()`` kills them by
pid, reaps them, then kills whatever else still carries this cluster's marker variable in
its environment (slurmstepd and the job processes under it).  Each cluster gets its own
ClusterName, node name and free TCP ports, so two clusters - or the leftover daemons of a
killed test run - do not collide.

Notes that shaped the code (see NOTES.md for the measurements):
* ``sinfo`` says ``idle`` about 1 s before the first job can start, so ``start()`` waits until
  a probe job has actually run.
* Client commands hang while slurmctld is down (they retry for about MessageTimeout seconds
  and more), so every call made here has a timeout.
* UNIX socket paths are limited to 107 bytes: ``root_dir`` must be short (checked).
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

__all__ = [
    "MARKER_VAR",
    "SlurmCluster",
    "SlurmLabError",
    "available",
    "parse_kv_line",
]

#: Every daemon (and every client started through ``env()``/``client_env()``) carries
#: ``SLURMLAB_ROOT=<root_dir>``; stop() uses it to find slurmstepd and job processes.
MARKER_VAR = "SLURMLAB_ROOT"

DAEMON_BINARIES = ("munged", "slurmctld", "slurmd", "slurmstepd")
CLIENT_BINARIES = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
INSTALL_HINT = "apt-get install -y slurm-wlm munge"
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
#: Environment variables that change what the client commands do (a test run inside a
#: Slurm job, a user's SQUEUE_FORMAT...); client_env() drops them.
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCANCEL_", "SCONTROL_",
                        "SACCT_", "SALLOC_", "SRUN_", "SPANK_")
_MAX_ROOT_LEN = 64  # longest socket: <root>/spool/<node>_<jobid>.<stepid> must stay < 108


class SlurmLabError(RuntimeError):
    """The cluster could not be started, a daemon died, or a client call failed."""


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    return shutil.which(name, path=path)


def available() -> str | None:
    """None if a cluster can be started here; otherwise a sentence saying why not."""
    if not sys.platform.startswith("linux"):
        return f"slurmlab needs Linux (this is {sys.platform})"
    missing = [b for b in DAEMON_BINARIES + CLIENT_BINARIES if _which(b) is None]
    if missing:
        return f"missing Slurm/munge binaries: {', '.join(missing)} (install: {INSTALL_HINT})"
    if os.geteuid() != 0:
        return f"slurmd must run as root to start jobs (euid is {os.geteuid()})"
    return None


_KV_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_kv_line(line: str) -> dict[str, str]:
    """Parse one ``Key=value Key=value`` line (``scontrol show job -o``, jobcomp/filetxt).

    Values may contain ``=`` (``TRES=cpu=1,mem=1M``) and spaces (``Comment=a b``); a value is
    everything up to the next `` Key=``.  A value that itself contains `` Word=`` cannot be
    told apart from a new key - keep names and comments free of spaces.
    """
    line = line.strip()
    matches = list(_KV_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def _free_port(taken: Iterable[int] = ()) -> int:
    """A TCP port that is free now, outside the ephemeral range (32768-60999)."""
    taken = set(taken)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(10000, 32000)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    raise SlurmLabError("no free TCP port found in 10000-32000")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"    ({path.name}: {exc.strerror})"
    body = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in body) or "    (empty)"


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process visible in /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(rest[1]), rest[0])
    return table


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return marker in data.split(b"\0")


def _hardware() -> dict[str, str]:
    """The node's CPUs/Boards/Sockets/Cores/Threads/RealMemory, as ``slurmd -C`` reports them."""
    slurmd = _which("slurmd")
    if slurmd:
        try:
            out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=20,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            if line.startswith("NodeName="):
                kv = parse_kv_line(line)
                keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore",
                        "RealMemory")
                if all(k in kv for k in keys):
                    return {k: kv[k] for k in keys}
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {"CPUs": str(os.cpu_count() or 1), "RealMemory": str(max(1, mem_kib // 1024))}


class SlurmCluster:
    """One slurmctld + one slurmd + one munged, all under ``root_dir``.

    Keyword arguments:
      cpus          job slots on the node; default: the machine's (``slurmd -C``).  More than
                    the hardware is allowed (SlurmdParameters=config_overrides).
      message_timeout, kill_wait, min_job_age, slurmd_timeout
                    the slurm.conf values of the same names.
      extra_conf    more slurm.conf lines, ``{"Key": "value"}``; they override the defaults
                    (``{"Key": None}`` drops a default line: Slurm's own default applies).
      start_timeout seconds start() may take before it gives up.
    """

    PARTITION = "batch"

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        cpus: int | None = None,
        message_timeout: int = 5,
        kill_wait: int = 5,
        min_job_age: int = 300,
        slurmd_timeout: int = 300,
        extra_conf: Mapping[str, str | None] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.root = Path(root_dir).absolute()
        self.cpus = cpus
        self.message_timeout = message_timeout
        self.kill_wait = kill_wait
        self.min_job_age = min_job_age
        self.slurmd_timeout = slurmd_timeout
        self.extra_conf = dict(extra_conf or {})
        self.start_timeout = start_timeout
        tag = f"{random.SystemRandom().getrandbits(24):06x}"
        self.cluster_name = f"lab{tag}"
        self.node_name = f"n{tag}"
        self.ctld_port = 0
        self.slurmd_port = 0
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started = False
        self._probe_count = 0
        atexit.register(_atexit_stop, weakref.ref(self))

    # -- paths ---------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def shared_dir(self) -> Path:
        """A folder jobs and the test both see (the whole host shares one filesystem)."""
        return self.root / "shared"

    @property
    def jobcomp_path(self) -> Path:
        return self.log_dir / "jobcomp.txt"

    def log_path(self, daemon: str) -> Path:
        """The daemon's own log file (``slurmctld``, ``slurmd``, ``munged``)."""
        return self.log_dir / f"{daemon}.log"

    # -- environment ---------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The variables a Slurm client needs for this cluster (merge into os.environ)."""
        return {"SLURM_CONF": str(self.conf_path), MARKER_VAR: str(self.root)}

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) without stray SLURM_*/SBATCH_*/SQUEUE_*... plus env()."""
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env.update(self.env())
        return env

    def _daemon_env(self) -> dict[str, str]:
        env = self.client_env()
        path = env.get("PATH", "/usr/bin:/bin")
        env["PATH"] = os.pathsep.join([path, *_SBIN_DIRS])
        return env

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config, start munged, slurmctld and slurmd, and wait until a job runs.

        A fresh cluster each time: state, spool and the jobcomp file of an earlier start() in
        the same root_dir are removed (logs are appended to).  start_ctld()/start_slurmd()
        are the restarts that keep state.
        """
        if self._started:
            raise SlurmLabError("cluster already started")
        why = available()
        if why is not None:
            raise SlurmLabError(why)
        if len(str(self.root)) > _MAX_ROOT_LEN:
            raise SlurmLabError(
                f"root_dir is {len(str(self.root))} characters long, at most {_MAX_ROOT_LEN} keep "
                f"the munge and slurmstepd socket paths under the 108-byte limit: {self.root}")
        t0 = time.monotonic()
        self._sweep()  # leftovers of an earlier run in the same root_dir
        self._started = True
        try:
            self._write_files()
            self._start_munged()
            self.timings["munged"] = time.monotonic() - t0
            self.start_ctld()
            self.timings["slurmctld"] = time.monotonic() - t0
            self.start_slurmd()
            self.timings["slurmd"] = time.monotonic() - t0
            self.probe(timeout=max(5.0, self.start_timeout - (time.monotonic() - t0)))
            self.timings["ready"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise

    def stop(self, remove: bool = False) -> None:
        """Kill every daemon by pid (and what runs under slurmd), reap them, remove sockets.

        Logs, state and the jobcomp file stay unless ``remove`` (then root_dir is deleted).
        """
        for name in ("slurmd", "slurmctld"):
            self._kill(name)
        self._sweep()  # slurmstepd and job processes
        self._kill("munged")
        self._sweep()
        for stale in (self.munge_socket, Path(str(self.munge_socket) + ".lock")):
            stale.unlink(missing_ok=True)
        self._started = False
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._started

    def pid(self, daemon: str) -> int | None:
        """The pid of a daemon started by this object, if it is alive."""
        proc = self._procs.get(daemon)
        return proc.pid if proc is not None and proc.poll() is None else None

    def alive(self, daemon: str) -> bool:
        return self.pid(daemon) is not None

    # -- single daemons --------------------------------------------------------------------
    def kill_ctld(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to slurmctld (SIGKILL: no state save) and reap it."""
        self._kill("slurmctld", sig)

    def start_ctld(self, timeout: float = 30.0) -> None:
        """Start slurmctld -D (it recovers jobs from StateSaveLocation); wait for
        ``scontrol ping``."""
        if self.alive("slurmctld"):
            raise SlurmLabError("slurmctld is already running")
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f",
                                  str(self.conf_path)])
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("slurmctld")
            try:
                out = self.run("scontrol", "ping", timeout=10, check=False).stdout
            except SlurmLabError:
                out = ""
            if "is UP" in out:
                return
            if time.monotonic() > deadline:
                raise self._failure(f"slurmctld did not answer `scontrol ping` within {timeout} s")
            time.sleep(0.2)

    def kill_slurmd(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to slurmd only (slurmstepd and the jobs are left alone) and reap it."""
        self._kill("slurmd", sig, group=False)

    def start_slurmd(self, timeout: float = 30.0) -> None:
        """Start ``slurmd -D -N <node>``; wait until slurmctld sees the node responding."""
        if self.alive("slurmd"):
            raise SlurmLabError("slurmd is already running")
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-N", self.node_name,
                               "-f", str(self.conf_path)])
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("slurmd")
            state = self.node_state(timeout=10)
            if state and not any(s in state for s in ("DOWN", "UNKNOWN", "NOT_RESPONDING",
                                                      "POWER")) and "*" not in state:
                return
            if time.monotonic() > deadline:
                raise self._failure(f"node {self.node_name} not up within {timeout} s "
                                    f"(state {state!r})")
            time.sleep(0.2)

    def resume_node(self) -> str:
        """``scontrol update nodename=<node> state=resume`` (clears DRAIN/DOWN); the new state."""
        self.run("scontrol", "update", f"nodename={self.node_name}", "state=resume",
                 timeout=15, check=False)
        return self.node_state() or ""

    def ensure_up(self, timeout: float = 30.0) -> None:
        """Restart a dead daemon and resume a drained/down node (between tests)."""
        if not self._started:
            raise SlurmLabError("cluster not started")
        if not self.alive("munged"):
            self._start_munged()
        if not self.alive("slurmctld"):
            self.start_ctld(timeout)
        if not self.alive("slurmd"):
            self.start_slurmd(timeout)
        state = self.node_state() or ""
        if any(s in state for s in ("DRAIN", "DOWN", "FAIL")):
            self.resume_node()

    def probe(self, timeout: float = 30.0) -> float:
        """Submit a job and wait until it has run; the seconds it took."""
        self._probe_count += 1
        marker = self.shared_dir / f".probe-{self._probe_count}"
        marker.unlink(missing_ok=True)
        t0 = time.monotonic()
        deadline = t0 + timeout
        job_id: int | None = None
        last_error = ""
        while job_id is None:
            try:
                job_id = self.sbatch("--job-name=slurmlab-probe", "--output=/dev/null",
                                     f"--chdir={self.shared_dir}",
                                     "--wrap", f"touch {shlex.quote(str(marker))}", timeout=15)
            except SlurmLabError as exc:
                last_error = str(exc)
                if time.monotonic() > deadline:
                    raise self._failure(f"sbatch of the probe job failed: {last_error}") from None
                time.sleep(0.3)
        while not marker.exists():
            for name in ("munged", "slurmctld", "slurmd"):
                self._check_alive(name)
            if time.monotonic() > deadline:
                job = self.run("scontrol", "show", "job", "-o", str(job_id), timeout=10,
                               check=False)
                raise self._failure(f"probe job {job_id} did not run within {timeout} s:\n"
                                    f"    {job.stdout.strip()}{job.stderr.strip()}")
            time.sleep(0.05)
        return time.monotonic() - t0

    # -- clients ---------------------------------------------------------------------------
    def run(self, *argv: str, timeout: float = 30.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a client command (sbatch, squeue...) against this cluster, with a timeout."""
        exe = _which(argv[0]) or argv[0]
        try:
            res = subprocess.run([exe, *argv[1:]], env=self.client_env(), capture_output=True,
                                 text=True, timeout=timeout, input=input, check=False,
                                 stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SlurmLabError(f"`{shlex.join(argv)}` timed out after {timeout} s") from None
        if check and res.returncode != 0:
            raise SlurmLabError(f"`{shlex.join(argv)}` exited {res.returncode}: "
                                f"{res.stderr.strip() or res.stdout.strip()}")
        return res

    def sbatch(self, *args: str, script: str | None = None, timeout: float = 30.0) -> int:
        """``sbatch --parsable ARGS`` (script on stdin if given); the job id."""
        res = self.run("sbatch", "--parsable", *args, input=script, timeout=timeout)
        first = res.stdout.strip().split(";")[0]
        if not first.isdigit():
            raise SlurmLabError(f"sbatch printed {res.stdout!r}")
        return int(first)

    def job(self, job_id: int | str, timeout: float = 15.0) -> dict[str, str] | None:
        """``scontrol show job -o ID`` as a dict; None once the job is unknown (purged)."""
        res = self.run("scontrol", "show", "job", "-o", str(job_id), timeout=timeout, check=False)
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:
                return None
            raise SlurmLabError(f"scontrol show job {job_id}: {res.stderr.strip()}")
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        return parse_kv_line(lines[0]) if lines else None

    def jobs(self, timeout: float = 15.0) -> list[dict[str, str]]:
        """Every job slurmctld still knows (pending, running and finished < MinJobAge)."""
        res = self.run("scontrol", "show", "job", "-o", timeout=timeout)
        return [parse_kv_line(line) for line in res.stdout.splitlines()
                if line.startswith("JobId=")]

    def squeue(self, fmt: str = "%i|%j|%T|%r|%k", *args: str,
               timeout: float = 15.0) -> list[list[str]]:
        """``squeue -h -t all -o FMT ARGS`` split on ``|``."""
        res = self.run("squeue", "-h", "-t", "all", "-o", fmt, *args, timeout=timeout)
        return [line.split("|") for line in res.stdout.splitlines() if line.strip()]

    def jobcomp(self) -> list[dict[str, str]]:
        """The jobcomp/filetxt lines (one per finished job) as dicts."""
        try:
            text = self.jobcomp_path.read_text()
        except FileNotFoundError:
            return []
        return [parse_kv_line(line) for line in text.splitlines() if line.strip()]

    def wait_state(self, job_id: int | str, states: Iterable[str], timeout: float = 60.0,
                   poll: float = 0.2) -> dict[str, str]:
        """Poll until the job's JobState is in ``states``; its last ``scontrol`` record."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        last: dict[str, str] | None = None
        while True:
            try:
                last = self.job(job_id)
            except SlurmLabError:
                pass  # slurmctld restarting: keep polling, keep the last record
            if last is not None and last.get("JobState") in wanted:
                return last
            if time.monotonic() > deadline:
                raise SlurmLabError(f"job {job_id} not in {sorted(wanted)} after {timeout} s: "
                                    f"{last}")
            time.sleep(poll)

    def node_state(self, timeout: float = 10.0) -> str | None:
        """The node's ``State`` as ``scontrol show node`` prints it (``IDLE``, ``MIXED``,
        ``IDLE+DRAIN``, ``DOWN+NOT_RESPONDING``...); None if slurmctld does not answer."""
        try:
            node = self.node(timeout=timeout)
        except SlurmLabError:
            return None
        return node.get("State") if node else None

    def node(self, timeout: float = 10.0) -> dict[str, str] | None:
        res = self.run("scontrol", "show", "node", "-o", self.node_name, timeout=timeout,
                       check=False)
        if res.returncode != 0 or not res.stdout.strip():
            return None
        return parse_kv_line(res.stdout.splitlines()[0])

    def cancel_all(self, timeout: float = 15.0) -> None:
        """``scancel --full`` every job of this cluster (best effort)."""
        ids = [row[0] for row in self.squeue("%i|%T", timeout=timeout)
               if row[1] in ("PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "CONFIGURING",
                             "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "STOPPED", "SIGNALING",
                             "COMPLETING")]
        if ids:
            self.run("scancel", *ids, timeout=timeout, check=False)

    # -- internals -------------------------------------------------------------------------
    def _write_files(self) -> None:
        # a fresh cluster: no jobs, node state or job ids from an earlier start() in root_dir
        # (slurmctld would also refuse a StateSaveLocation written under another ClusterName)
        for sub in ("state", "spool"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        self.jobcomp_path.unlink(missing_ok=True)
        for sub, mode in (("etc", 0o755), ("munge", 0o711), ("state", 0o700), ("spool", 0o755),
                          ("log", 0o755), ("run", 0o755), ("shared", 0o777)):
            d = self.root / sub
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        self.root.chmod(0o755)  # jobs of other users must reach the munge socket
        key = self.munge_dir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(1024))
        if not self.ctld_port:
            self.ctld_port = _free_port()
            self.slurmd_port = _free_port({self.ctld_port})
        (self.root / "etc" / "plugstack.conf").write_text("")
        self.conf_path.write_text(self._slurm_conf())

    def _slurm_conf(self) -> str:
        hw = _hardware()
        conf: dict[str, str] = {
            "ClusterName": self.cluster_name,
            "SlurmctldHost": "localhost",
            "SlurmctldPort": str(self.ctld_port),
            "SlurmdPort": str(self.slurmd_port),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "CredType": "cred/munge",
            "StateSaveLocation": str(self.state_dir),
            "SlurmdSpoolDir": str(self.spool_dir),
            "SlurmctldPidFile": str(self.root / "run" / "slurmctld.pid"),
            "SlurmdPidFile": str(self.root / "run" / "slurmd.pid"),
            "SlurmctldLogFile": str(self.log_path("slurmctld")),
            "SlurmdLogFile": str(self.log_path("slurmd")),
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "SlurmctldSyslogDebug": "quiet",
            "SlurmdSyslogDebug": "quiet",
            "PlugStackConfig": str(self.root / "etc" / "plugstack.conf"),
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "MpiDefault": "none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "SchedulerType": "sched/backfill",
            "SchedulerParameters": "batch_sched_delay=0",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/filetxt",
            "JobCompLoc": str(self.jobcomp_path),
            "MailProg": "/bin/true",
            "ReturnToService": "2",
            "MessageTimeout": str(self.message_timeout),
            "KillWait": str(self.kill_wait),
            "MinJobAge": str(self.min_job_age),
            "SlurmdTimeout": str(self.slurmd_timeout),
            "InactiveLimit": "0",
            "TmpFS": str(self.root / "shared"),
        }
        node = {"NodeName": self.node_name, "NodeHostname": "localhost",
                "NodeAddr": "127.0.0.1", **hw, "State": "UNKNOWN"}
        if self.cpus is not None and str(self.cpus) != hw.get("CPUs"):
            for key in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"):
                node.pop(key, None)
            node["CPUs"] = str(self.cpus)
            conf["SlurmdParameters"] = "config_overrides"
        for key, value in self.extra_conf.items():
            if value is None:
                conf.pop(key, None)  # back to Slurm's default
            else:
                conf[key] = value
        lines = ["# written by slurmlab.py; every path is under " + str(self.root)]
        lines += [f"{k}={v}" for k, v in conf.items()]
        lines.append(" ".join(f"{k}={v}" for k, v in node.items()))
        lines.append(f"PartitionName={self.PARTITION} Nodes={self.node_name} Default=YES "
                     "MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _start_munged(self, timeout: float = 15.0) -> None:
        self.munge_socket.unlink(missing_ok=True)
        self._spawn("munged", [
            _which("munged") or "munged", "--foreground", "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={self.munge_dir / 'munge.key'}",
            f"--log-file={self.log_path('munged')}",
            f"--pid-file={self.root / 'run' / 'munged.pid'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
            "--num-threads=4",
        ])
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("munged")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(self.munge_socket))
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failure(f"munged socket not up within {timeout} s")
            time.sleep(0.05)

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        out = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            out.write(f"\n--- {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
            out.flush()
            self._procs[name] = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._daemon_env(), cwd=self.root, start_new_session=True)
        finally:
            out.close()

    def _kill(self, name: str, sig: int = signal.SIGKILL, group: bool = True) -> None:
        proc = self._procs.get(name)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                if group:
                    os.killpg(proc.pid, sig)  # its own session: pgid == pid
                else:
                    os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10 if sig == signal.SIGKILL else 30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if sig == signal.SIGKILL or proc.poll() is not None:
            self._procs.pop(name, None)

    def _sweep(self) -> list[int]:
        """SIGKILL every live process carrying this cluster's marker, and its descendants."""
        marker = f"{MARKER_VAR}={self.root}".encode()
        table = _proc_table()
        spare = {os.getpid()}
        pid = os.getpid()
        while pid in table and pid not in (0, 1):  # never ourselves or our ancestors
            pid = table[pid][0]
            spare.add(pid)
        roots = [p for p, (_, st) in table.items()
                 if st != "Z" and p not in spare and _has_marker(p, marker)]
        children: dict[int, list[int]] = {}
        for p, (pp, _) in table.items():
            children.setdefault(pp, []).append(p)
        doomed: set[int] = set()
        stack = list(roots)
        while stack:
            p = stack.pop()
            if p in doomed or p in spare:
                continue
            doomed.add(p)
            stack.extend(children.get(p, ()))
        for p in doomed:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in doomed:  # reap the ones that are our children; wait for the rest to die
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            live = _proc_table()
            if not any(p in live and live[p][1] != "Z" for p in doomed):
                break
            time.sleep(0.05)
        return sorted(doomed)

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise self._failure(f"{name} is not running (exit status {code})")

    def _failure(self, message: str) -> SlurmLabError:
        parts = [message, f"root_dir: {self.root}"]
        for name in ("munged", "slurmctld", "slurmd"):
            for path in (self.log_path(name), self.log_dir / f"{name}.out"):
                if path.exists():
                    parts.append(f"--- tail of {path}:\n{_tail(path)}")
        return SlurmLabError("\n".join(parts))

    def __repr__(self) -> str:
        return (f"SlurmCluster({str(self.root)!r}, cluster={self.cluster_name}, "
                f"node={self.node_name}, ports={self.ctld_port}/{self.slurmd_port}, "
                f"running={self._started})")


def _atexit_stop(ref: weakref.ref[SlurmCluster]) -> None:
    cluster = ref()
    if cluster is not None and cluster.running:
        try:
            cluster.stop()
        except Exception as exc:  # noqa: BLE001 - interpreter exit: report, do not raise
            print(f"slurmlab: stopping {cluster.root} at exit failed: {exc}", file=sys.stderr)
