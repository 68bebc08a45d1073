"""The chaos suite: a real batchd under load, SIGKILLs at random instants, every invariant.

    python -m bench.chaos [--seed N] [--duration D] [--json] [--rate R] [--keep DIR]

Starts batchd on a fresh state dir (on a size-limited tmpfs when mounting is allowed) and
drives it only from outside: batchctl, signals, files outside the state dir. A seeded
generator draws the workload (bench.chaos.workload: a table of parts) and the faults
(bench.chaos.faults: SIGKILL of batchd, each worker, adaptors and agents; SIGSTOP/SIGCONT of
a worker; clean SIGTERM restarts; ENOSPC windows). After `--duration` seconds it settles
(bounded) and checks every invariant (bench.chaos.checks), one line each with counts. Any
violation: exit 1, the seed that reproduces it and the first examples. `--json` prints one
object: seed, duration_s, kills, kills_by, jobs, violations, violation_examples, settle_ms
(and faults, features, parts, notes, checks). docs/CHAOS.md has the whole story.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from bench.chaos.run import Options, run
from supervisor.config import parse_duration

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, help="the seed (default: a fresh random one, printed)")
    p.add_argument("--duration", default="60s", help="how long the faults go on (60s, 10m)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--rate", type=float, default=3.5, help="faults drawn per second (3.5)")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="run in DIR and keep it (state dir, log, markers) for a post-mortem")
    p.add_argument("--no-tmpfs", action="store_true",
                   help="keep the state dir on the work folder's disk (no ENOSPC windows)")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 10**9)
    try:
        duration = parse_duration(a.duration)
    except ValueError as exc:
        p.error(f"--duration: {exc}")
    print(f"chaos: seed {seed}, {duration:g} s (python -m bench.chaos --seed {seed} "
          f"--duration {duration:g}s)", file=sys.stderr if a.json else sys.stdout, flush=True)
    rep = run(Options(seed=seed, duration=duration, rate=a.rate, work=a.keep,
                      keep=a.keep is not None, tmpfs=not a.no_tmpfs, quiet=a.json))
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        print(f"seed {rep['seed']}: {rep['duration_s']} s, {rep['kills']} kills "
              f"({', '.join(f'{k} {v}' for k, v in rep['kills_by'].items())}), faults "
              f"{rep['faults']}, {rep['jobs']} jobs, settled in {rep['settle_ms']:.0f} ms")
        for line in rep["checks"]:
            print(line)
    if rep["violations"]:
        print(f"chaos: {rep['violations']} violation(s); reproduce with: python -m bench.chaos "
              f"--seed {seed} --duration {duration:g}s", file=sys.stderr)
        return 1
    return 0
