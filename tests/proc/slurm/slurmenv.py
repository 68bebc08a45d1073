"""A real batchd with `launcher: slurm` on a real single-host Slurm cluster (slurmlab).

`SlurmEnv` is the process harness (tests.proc.harness.Env) with the Slurm launcher, polled
every second, and batchd started with the cluster's client environment (SLURM_CONF).
It also reads Slurm's side: the Slurm jobs carrying a batchd job's tag.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervisor.state.clock import parse_iso
from tests.proc.harness import CONFIG, DEAD_AFTER, ROOT, Env
from tests.proc.slurm.slurmlab import SlurmCluster

__all__ = ["SLURM_CONFIG", "SlurmEnv"]

#: The Slurm launcher, asked every second.
SLURM_CONFIG = "slurm: {{poll: {poll}, max_jobs: {max_jobs}}}\n"


class SlurmEnv(Env):
    """Env whose jobs are Slurm jobs of `cluster`."""

    def __init__(self, tmp_path: Path, cluster: SlurmCluster, *, poll: str = "1s",
                 max_jobs: int = 1000, dead_after: float = DEAD_AFTER) -> None:
        super().__init__(tmp_path)
        self.cluster = cluster
        text = CONFIG.format(state=self.state, log=self.log, dead_after=dead_after, max_jobs=8)
        text = text.replace("launcher: direct", "launcher: slurm")
        self.config.write_text(text + SLURM_CONFIG.format(poll=poll, max_jobs=max_jobs))

    def start(self) -> dict[str, Any]:
        """Start batchd with the cluster's client environment (SLURM_CONF)."""
        return self.start_with_path(None)

    def start_with_path(self, first: Path | None) -> dict[str, Any]:
        """start(), with `first` (a folder of stand-in commands) first on batchd's PATH."""
        assert self.batchd is None or self.batchd.poll() is not None
        env = self.cluster.client_env()
        if first is not None:
            env["PATH"] = f"{first}{os.pathsep}{env.get('PATH', '')}"
        self.batchd = subprocess.Popen(
            [sys.executable, "-m", "supervisor.batchd", "-c", str(self.config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return self.wait_scheduler()

    def slurm_jobs(self, job_id: str) -> list[dict[str, str]]:
        """Every Slurm job carrying the job's tag (name and job folder), as scontrol shows
        it (jobs ended within MinJobAge included)."""
        job_dir = str(self.layout.job_dir(job_id))
        return [j for j in self.cluster.jobs()
                if j.get("JobName") == f"batchd-{job_id}" and j.get("WorkDir") == job_dir]

    def runs(self, job_id: str) -> int:
        """How many times the job's agent started (each run of the test's prompts appends a
        line to `runs` in the state dir's parent)."""
        path = self.state.parent / "runs"
        if not path.exists():
            return 0
        return path.read_text().split().count(job_id)

    def started_at(self, job_id: str) -> float | None:
        entry = self.entry(job_id)
        return None if entry is None else parse_iso(entry.get("started_at"))
