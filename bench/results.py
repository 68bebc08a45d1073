"""Results benchmark: what collecting a job's changes costs, beside plain git on the same tree.

    python -m bench.results --json [--quick] [--dir DIR]

A real git repository on disk (under DIR, default a temp dir) of 10,000 files (100 folders
of 100 files, 20 lines each), committed and cloned (file://, so the clone's objects are
packed, as a job's workspace cloned from its mirror is); then 1,000 of the clone's files
changed as an agent would: 700
modified, 150 added (untracked), 100 deleted, 50 renamed (--quick: 2,000 files, 200
changed, same shares). Printed as ONE JSON object:

- collect_ms: the adaptor's whole collection of that workspace (adaptors._changes.collect:
  the temporary index seeded from the clone's, `git add --all` into it, write-tree, the
  commits since base, the file list with line counts, the binary-safe patch) plus writing
  changes.patch and changes.json durably; the median of 9 runs. Target <= 1,000 ms.
- git_baseline_ms: the peer, measured in the same run on the same tree: a plain
  `git status --porcelain` followed by `git diff --stat`, the median of 9 runs, each
  right after a collection.
- ratio: collect_ms / git_baseline_ms. Target <= 2.
Each run's result is checked: every changed file is listed, the patch is whole.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adaptors._changes import collect, write_changes
from adaptors._spec import parse_spec
from bench.queue import is_tmpfs
from supervisor.state.layout import JobPaths

__all__ = ["bench_collect", "build", "main"]

RUNS = 9
_LINES = "".join(f"line {i} of a source file that an agent may edit\n" for i in range(20))


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@example.com",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def build(root: Path, files: int, changed: int) -> tuple[Path, str]:
    """A committed repository of `files` files with `changed` of them then changed (70 %
    modified, 15 % added, 10 % deleted, 5 % renamed); (its folder, the base commit)."""
    origin = root / "origin"
    origin.mkdir(parents=True)
    _git(origin, "init", "-q")
    per = 100
    for n in range(files):
        folder = origin / f"d{n // per:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{n % per:03d}.txt").write_text(f"file {n}\n{_LINES}")
    _git(origin, "add", "-A")
    _git(origin, "commit", "-q", "-m", "base")
    ws = root / "ws"                    # a clone, as a job's workspace is (its objects packed)
    _git(root, "clone", "-q", origin.as_uri(), str(ws))
    base = _git(ws, "rev-parse", "HEAD").strip()
    paths = sorted(p for p in ws.rglob("*.txt"))
    modified, added = int(changed * 0.70), int(changed * 0.15)
    deleted = int(changed * 0.10)
    renamed = changed - modified - added - deleted
    for p in paths[:modified]:
        with p.open("a") as f:
            f.write("a line the agent added\n")
    for n in range(added):
        (ws / "new").mkdir(exist_ok=True)
        (ws / "new" / f"n{n}.txt").write_text("".join(f"new {n}: {i}\n" for i in range(20)))
    for p in paths[modified:modified + deleted]:
        p.unlink()
    for p in paths[modified + deleted:modified + deleted + renamed]:
        p.rename(p.with_suffix(".moved"))
    return ws, base


def _collect_once(ws: Path, base: str, jobs: Path, run: int) -> tuple[float, int, int]:
    job_dir = jobs / f"j{run}"
    job_dir.mkdir(parents=True)
    spec = parse_spec({"id": job_dir.name, "adaptor": "command", "prompt": "edit",
                       "workspace": str(ws), "repos": [{"name": "app", "path": str(ws),
                                                        "url": None, "base": base}]},
                      job_dir)
    files = JobPaths(job_dir)
    start = time.perf_counter()
    got = collect(spec, files, push=False)
    write_changes(files, got)
    took = (time.perf_counter() - start) * 1000
    if got.error is not None or got.cut:
        raise RuntimeError(f"collection failed: {got.error or 'the patch was cut'}")
    return took, got.repos[0].files or 0, len(got.patch)


def _baseline_once(ws: Path) -> float:
    start = time.perf_counter()
    _git(ws, "status", "--porcelain")
    _git(ws, "diff", "--stat")
    return (time.perf_counter() - start) * 1000


def bench_collect(root: Path, files: int, changed: int, runs: int = RUNS) -> dict[str, Any]:
    """collect_ms and git_baseline_ms (medians, runs interleaved) over one built tree."""
    ws, base = build(root, files, changed)
    collect_ms, baseline_ms = [], []
    listed = patch = 0
    _baseline_once(ws)                          # both start from a refreshed index
    for run in range(runs):
        took, listed, patch = _collect_once(ws, base, root / "jobs", run)
        collect_ms.append(took)
        baseline_ms.append(_baseline_once(ws))
    if listed != changed:
        raise RuntimeError(f"{listed} files listed, {changed} changed")
    c, b = statistics.median(collect_ms), statistics.median(baseline_ms)
    return {"files": files, "changed": changed, "collect_ms": round(c, 1),
            "git_baseline_ms": round(b, 1), "ratio": round(c / b, 2), "patch_bytes": patch}


def _base(given: str | None) -> Path:
    if given is not None:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="bench-results-", dir=path))
    path = Path(tempfile.mkdtemp(prefix="bench-results-"))
    if is_tmpfs(str(path)):
        shutil.rmtree(path)
        home = Path(os.environ.get("HOME", "."))
        path = Path(tempfile.mkdtemp(prefix="bench-results-", dir=home))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.results", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smaller tree (seconds)")
    parser.add_argument("--dir", help="where the tree goes (default: a temp dir)")
    args = parser.parse_args(argv)
    files, changed = (2_000, 200) if args.quick else (10_000, 1_000)
    base = _base(args.dir)
    try:
        out: dict[str, Any] = {"quick": args.quick}
        out.update(bench_collect(base, files, changed))
        out["targets"] = {"collect_ms": 1000, "ratio": 2.0}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:20} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
