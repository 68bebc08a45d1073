"""The reaper with a real batchd: orphans made the hard way, retention, a removal cut
short by SIGKILL, `clean` — each reaped within two passes, with its reason."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.state import archive
from supervisor.state.layout import READY, WORKER_STATE, read_record
from supervisor.state.proc import alive
from tests.helpers import make_remote, until
from tests.proc.harness import Env

#: The reaper passes twice a second with a grace of 1 s (temp files of writes in progress
#: live milliseconds): "two passes" is about 2 s.
FAST = """
reaper: {interval: 0.5, grace: 1s}
"""
TWO_PASSES = 10.0        # generous: the machine is shared


def _reaped(env: Env) -> dict[str, int]:
    rec = read_record(WORKER_STATE, env.layout.worker_state("reaper"), owner=False)
    return dict(rec["totals"]) if isinstance(rec, dict) else {}


def _reasons(env: Env, kind: str) -> list[tuple[str, str]]:
    """(what, why) of each `reaped` line of that kind in batchd's JSON log."""
    out = []
    for line in env.log.read_text().splitlines() if env.log.exists() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "reaped" and rec.get("kind") == kind:
            out.append((str(rec.get("what")), str(rec.get("why"))))
    return out


def _signalled(env: Env) -> list[dict[str, Any]]:
    out = []
    for line in env.log.read_text().splitlines() if env.log.exists() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "orphan signalled":
            out.append(rec)
    return out


def _reaper_pid(env: Env) -> int:
    rec = read_record(READY, env.layout.ready_file("reaper"), owner=False)
    assert isinstance(rec, dict)
    return int(rec["pid"])


def test_a_job_cancelled_while_the_scheduler_was_down_leaves_no_process(tmp_path: Path) -> None:
    """A job whose agent escaped into its own session, ignoring SIGTERM: its adaptor is
    SIGKILLed and the scheduler stopped; while the job is `running` in the queue the
    reaper leaves its processes alone (only the scheduler decides a job is over); cancel
    it while the scheduler is down, start the scheduler: the job ends (cancelled, or lost
    if recovery finds its adaptor dead first) and no process of it remains."""
    env = Env(tmp_path, extra=FAST)
    try:
        env.start()
        escape = ("setsid python3 -c 'import signal,time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)' & sleep 300")
        env.submit("esc", escape)
        env.wait_state("esc", "running")
        until("the escaped agent", lambda: len(env.job_pids("esc")) >= 3)
        env.ctl("stop", "scheduler")
        pid = env.entry("esc")["pid"]                      # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        # a SIGKILL is delivered asynchronously: the adaptor may still be exiting here
        until("the adaptor gone", lambda: not alive(pid, None))
        before = set(env.job_pids("esc"))
        assert before
        reaper = _reaper_pid(env)
        time.sleep(1.5)                                    # 3 passes at least
        assert (before, []) == (set(env.job_pids("esc")) & before, _signalled(env))
        env.ctl("cancel", "esc")
        env.ctl("start", "scheduler")
        # cancelled, or lost when the restarted scheduler's recovery finds the dead adaptor
        # past dead_after before it takes the cancel: either way the scheduler's word
        env.wait_state("esc", "cancelled", "lost")
        until("no process of the job", lambda: not env.job_pids("esc"), TWO_PASSES)
        assert alive(reaper, None)
    finally:
        env.close()


def test_an_unknown_jobs_process_of_another_user_is_reaped(tmp_path: Path) -> None:
    """A process carrying this state dir's job folder for a job the queue does not know
    (a restored backup, a damaged log), running as another user and ignoring SIGTERM:
    SIGTERM, then SIGKILL after kill_grace, each logged with `job unknown`."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as another user")
    nobody = pwd.getpwnam("nobody")
    env = Env(tmp_path, extra=FAST)
    try:
        env.start()
        code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
        proc = subprocess.Popen(                           # the system's python: any user runs it
            # sh ignores SIGTERM before it execs Python (the disposition is kept across the
            # exec): a slow start of Python on a loaded machine cannot let the reaper's
            # SIGTERM in first
            ["/bin/sh", "-c", "trap '' TERM; exec /usr/bin/python3 -c \"$0\"", code],
            start_new_session=True, user=nobody.pw_uid,
            env={"BATCHD_JOB_ID": "ghost", "BATCHD_JOB_DIR": str(env.layout.job_dir("ghost")),
                 "PATH": os.environ["PATH"]})
        assert -9 == proc.wait(TWO_PASSES + 5)
        sigs = [(s["signal"], s["why"], s["uid"]) for s in _signalled(env)
                if s["process"] == proc.pid]
        assert [("SIGTERM", "job unknown", nobody.pw_uid),
                ("SIGKILL", "job unknown", nobody.pw_uid)] == sigs
        until("the count", lambda: _reaped(env).get("processes") == 1, TWO_PASSES)
    finally:
        env.close()


def test_a_forgotten_jobs_workspace_and_a_retained_job_go(tmp_path: Path) -> None:
    """`clean` forgets a finished job (archived, folders gone, out of the queue); a
    workspace that reappears for it afterwards (a crash left it) is reaped as `no such
    job`; `history` shows the record; stats count it all."""
    env = Env(tmp_path, extra=FAST)
    try:
        env.start()
        env.submit("done", "echo hello")
        env.wait_state("done", "completed")
        out = json.loads(env.ctl("clean", "--json").stdout)
        assert [("done", "completed")] == [(g["id"], g["state"]) for g in out]
        until("the scheduler to forget it", lambda: env.entry("done") is None, TWO_PASSES)
        assert (False, 1) == (env.layout.job_dir("done").exists(),
                              env.ctl("status", "done", check=False).returncode)
        ws = Path(env.state / "workspaces" / "done")
        (ws / "left").mkdir(parents=True)
        until("the workspace reaped with its reason",
              lambda: (str(ws), "no such job") in _reasons(env, "workspaces"), TWO_PASSES)
        assert not ws.exists()
        hist = json.loads(env.ctl("history", "--json").stdout)
        assert [("done", "completed")] == [(h["id"], h["state"]) for h in hist]
        stats = env.stats()
        assert (1, 1, 1) == (stats["submitted"], stats["completed"], stats["reaped"]["jobs"])
        records, notes = archive.read(env.layout)
        assert (1, []) == (len(records), notes)
    finally:
        env.close()


def test_a_reaper_sigkilled_mid_removal_is_finished_by_the_next_pass(tmp_path: Path) -> None:
    """A finished job's big workspace past retention.workspaces: SIGKILL the reaper while
    it deletes it; batchd restarts the reaper, whose next pass finishes the removal (no
    half-deleted folder under any name)."""
    env = Env(tmp_path, extra=FAST + "retention: {workspaces: 1s}\n")
    try:
        files = 30000
        env.submit("big", f'for d in $(seq 1 30); do mkdir "$d"; (cd "$d" && seq 1 {files // 30}'
                          ' | xargs touch); done')
        env.start()
        env.wait_state("big", "completed", deadline=120)
        junk = env.state / "workspaces" / ".reap.big"
        pid = _reaper_pid(env)
        until("the removal to begin", junk.exists, TWO_PASSES, interval=0.001)
        time.sleep(0.05)                         # into the deletion, most of the time
        os.kill(pid, signal.SIGKILL)
        left = sum(len(f) for _, _, f in os.walk(junk))
        assert (True, True) == (junk.exists(), left <= files)    # renamed, then cut short
        until("the workspace gone", lambda: not (env.state / "workspaces" / "big").exists()
              and not junk.exists(), TWO_PASSES * 3)
        until("a new reaper", lambda: _reaper_pid(env) != pid)
        assert [] == [n for n in os.listdir(env.state / "workspaces") if n.startswith(".")]
    finally:
        env.close()


def test_a_lock_whose_release_was_lost_is_freed_through_the_locks_worker(
        tmp_path: Path) -> None:
    """A job holding an exclusive repository dies while the locks worker is frozen
    (SIGSTOP) and its release request is lost (removed here: what the reaper is the net
    for); the locks worker goes on without a restart, so no recovery reconciles it. The
    reaper sees the lock of a `lost` job, asks the locks worker, which frees it: the job
    waiting behind runs, within two passes, and the reaper logged why."""
    bare, _ = make_remote(tmp_path, "app")
    env = Env(tmp_path, extra=FAST + f"repositories:\n  app: {{url: {bare}, exclusive: true}}\n")
    try:
        env.start()
        env.submit("holder", "sleep 300", "--repo", "app")
        env.wait_state("holder", "running")
        env.submit("next", "echo ok", "--repo", "app")
        env.wait_state("next", "waiting")
        rec = read_record(READY, env.layout.ready_file("locks"), owner=False)
        assert isinstance(rec, dict)
        locks_pid = int(rec["pid"])
        os.kill(locks_pid, signal.SIGSTOP)
        try:
            for pid in env.job_pids("holder"):
                os.kill(pid, signal.SIGKILL)
            env.wait_state("holder", "lost")
            release = env.layout.inbox("locks") / "release-holder.json"
            until("the scheduler's release", release.exists)
            release.unlink()
        finally:
            os.kill(locks_pid, signal.SIGCONT)
        env.wait_state("next", "completed", deadline=TWO_PASSES + 5)
        assert ("holder", "job lost holds app") in _reasons(env, "locks")
        until("the count", lambda: _reaped(env).get("locks") == 1, TWO_PASSES)
    finally:
        env.close()
