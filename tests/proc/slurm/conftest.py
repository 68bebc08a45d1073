"""Fixtures of the Slurm process tests: a real single-host Slurm cluster and a batchd on it.

* `slurm_cluster` (session): one cluster (munged, slurmctld -D, slurmd -D; 24 job slots,
  KillWait 5 s) for the whole run, started on first use (about 3 s), stopped by pid at the
  end. Tests marked `slurm` run only under `make test-slurm` (tests/conftest.py skips
  them elsewhere, saying why).
* `slurm` (per test): the same cluster, repaired before and after each test (a daemon a
  test killed is restarted, a drained node resumed, leftover jobs cancelled), as an
  operator would.
* `senv`: a batchd with `launcher: slurm` on that cluster (tests.proc.slurm.slurmenv).

Clusters live in /tmp/slurmlab-XXXXXX (short paths: UNIX sockets; 0755: jobs reach the
munge socket) and are removed afterwards; SLURMLAB_KEEP=1 keeps them (logs in <root>/log/).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proc.slurm.slurmenv import SlurmEnv
from tests.proc.slurm.slurmlab import SlurmCluster

#: KillWait of the test clusters: 5 s instead of Slurm's 30 keeps cancel tests short.
KILL_WAIT = 5
#: Job slots on the node (more than the 2 cores: jobs here mostly sleep).
CPUS = 24


def _cluster_root(name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    path.chmod(0o755)
    return path


def _keep() -> bool:
    return bool(os.environ.get("SLURMLAB_KEEP"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(_cluster_root("slurmlab"), kill_wait=KILL_WAIT, cpus=CPUS)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(remove=not _keep())


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    slurm_cluster.ensure_up()
    yield slurm_cluster
    slurm_cluster.ensure_up()
    slurm_cluster.cancel_all()


@pytest.fixture
def senv(tmp_path: Path, slurm: SlurmCluster) -> Iterator[SlurmEnv]:
    env = SlurmEnv(tmp_path, slurm)
    yield env
    env.close()
