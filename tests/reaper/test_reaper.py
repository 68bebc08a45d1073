"""The reaper worker over a real state dir: each part of a pass, recorded; `clean`; main."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import locks, reaper
from supervisor import log as _log
from supervisor import runtime as _runtime
from supervisor.config import Config, RepoConfig, RetentionConfig
from supervisor.state import archive
from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.clock import MockClock, iso_now
from supervisor.state.layout import (
    READY,
    REPLY,
    REQUEST,
    WORKER_STATE,
    Layout,
    read_record,
    send_request,
)
from supervisor.state.locktable import acquire_request
from supervisor.state.queue import JOB_STATES, TERMINAL_STATES, JobQueue
from supervisor.state.submission import write_submission
from tests.helpers import BadDisk, until
from tests.reaper.conftest import GRACE, aged, make_cfg, touch

DAY = 86400.0
LIVE = ("queued", "waiting", "starting", "running")


def build(cfg: Config, jobs: Iterable[dict[str, Any]], now: float) -> Layout:
    """A state dir with these jobs in a real WAL, each with a job folder and a workspace
    (unless it says `folder: False` / `workspace: False`), all older than the grace."""
    layout = Layout(cfg.state_dir)
    jobs = list(jobs)
    with JobQueue.open(layout.wal_dir) as q:
        for job in jobs:
            body = {k: v for k, v in job.items()
                    if k not in ("state", "ended", "folder", "workspace_made")}
            body.setdefault("created_at", iso_now(now - 90 * DAY))
            body.setdefault("workspace", str(cfg.workspace_dir / job["id"]))
            q.enqueue(job["id"], body)
            fields: dict[str, Any] = {"state": job["state"]}
            if job.get("ended") is not None:
                fields["finished_at"] = iso_now(now - job["ended"] * DAY)
            q.update(job["id"], **fields)
    for job in jobs:
        if job.get("folder", True):
            aged(touch(layout.job_output(job["id"]), GRACE * 2).parent, GRACE * 2)
        if job.get("workspace_made", True):
            ws = Path(cfg.workspace_dir / job["id"])
            aged(touch(ws / "README", GRACE * 2).parent, GRACE * 2)
    return layout


def make(tmp_path: Path, jobs: Iterable[dict[str, Any]], **kw: Any
         ) -> tuple[reaper.Reaper, Layout]:
    now = time.time()
    cfg = make_cfg(tmp_path, **kw)
    layout = build(cfg, jobs, now)
    return reaper.Reaper(cfg, layout, _log.get("test"), MockClock(now)), layout


def forget_requests(layout: Layout) -> list[list[str]]:
    inbox = layout.inbox("scheduler")
    out = []
    for name in sorted(os.listdir(inbox)) if inbox.exists() else []:
        rec = read_record(REQUEST, inbox / name, owner=False)
        if isinstance(rec, dict) and rec["kind"] == "forget":
            out.append(rec["jobs"])
    return out


def test_a_pass_removes_what_is_past_retention_and_keeps_the_rest(tmp_path: Path) -> None:
    """Finished past retention.jobs: archived, folder gone, the scheduler asked to forget
    it; workspaces past retention.workspaces (7 days): gone, their jobs kept; live
    and young things: untouched; every removal counted in reaper/state.json."""
    r, layout = make(tmp_path, [
        {"id": "old", "state": "completed", "ended": 31},
        {"id": "mid", "state": "failed", "ended": 8},
        {"id": "new", "state": "completed", "ended": 1},
        {"id": "run", "state": "running"}])
    did = reaper.one_pass(r)
    ws = r.cfg.workspace_dir
    assert ({"jobs": 1, "workspaces": 2}, [["old"]]) == (
        {k: n for k, n in did.items() if n}, forget_requests(layout))
    assert {"old": (False, False), "mid": (True, False), "new": (True, True),
            "run": (True, True)} == {j: (layout.job_dir(j).exists(), (ws / j).exists())
                                     for j in ("old", "mid", "new", "run")}
    records, notes = archive.read(layout)
    assert ([("old", "completed")], []) == ([(x["id"], x["state"]) for x in records], notes)
    rec = read_record(WORKER_STATE, layout.worker_state("reaper"), owner=False)
    assert isinstance(rec, dict)
    assert (1, 2, 1) == (rec["removed"]["jobs"], rec["totals"]["workspaces"],
                         rec["totals"]["jobs"])
    assert {"jobs": 0} == {"jobs": reaper.one_pass(r)["jobs"]}       # not again


def test_orphan_workspaces_folders_and_mirrors_go_with_their_reason(tmp_path: Path) -> None:
    """A workspace and a job folder with no job, a half-made workspace of a finished job,
    trash a crash left, the mirror of a removed repository: removed; a mirror of a
    configured repository and everything younger than the grace: kept."""
    r, layout = make(tmp_path, [{"id": "done", "state": "completed", "ended": 1,
                                 "workspace_made": False}])
    ws = r.cfg.workspace_dir
    r.cfg = Config(**{**r.cfg.__dict__, "repositories": {"app": RepoConfig(url="/x")}})
    made = {
        "ghost_ws": aged(touch(ws / "ghost" / "f", GRACE * 2).parent, GRACE * 2),
        "prep": aged(touch(ws / ".prep.done" / "f", GRACE * 2).parent, GRACE * 2),
        "trash": touch(ws / ".reap.x" / "f", 0).parent,
        "ghost_job": aged(touch(layout.job_output("ghost"), GRACE * 2).parent, GRACE * 2),
        "gone_mirror": aged(touch(layout.mirror("old") / "HEAD", GRACE * 2).parent, GRACE * 2),
        "app_mirror": aged(touch(layout.mirror("app") / "HEAD", GRACE * 2).parent, GRACE * 2),
        "young_ws": touch(ws / "young" / "f", 0).parent}
    did = reaper.one_pass(r)
    assert {"ghost_ws": False, "prep": False, "trash": False, "ghost_job": False,
            "gone_mirror": False, "app_mirror": True, "young_ws": True} == {
        k: p.exists() for k, p in made.items()}
    assert {"workspaces": 3, "job_folders": 1, "mirrors": 1} == {
        k: n for k, n in did.items() if n}


def test_a_live_job_names_what_it_needs(tmp_path: Path) -> None:
    """A finished job that a queued job waits for, or that a queued job resumes, is not
    forgotten; the resumed workspace stays past retention.workspaces."""
    r, layout = make(tmp_path, [
        {"id": "dep", "state": "completed", "ended": 60},
        {"id": "w", "state": "queued", "after": ["dep"]},
        {"id": "ses", "state": "completed", "ended": 60},
        {"id": "r", "state": "queued", "resume_of": "ses", "workspace_made": False}],
        retention=RetentionConfig(jobs=30 * DAY, workspaces=1 * DAY))
    layout_ws = r.cfg.workspace_dir
    did = reaper.one_pass(r)
    assert {"jobs": 0, "workspaces": 1} == {k: did[k] for k in ("jobs", "workspaces")}
    assert (True, False, []) == ((layout_ws / "ses").exists(), (layout_ws / "dep").exists(),
                                 forget_requests(layout))


def test_nothing_job_related_is_reaped_when_the_queue_cannot_be_read(tmp_path: Path) -> None:
    """A WAL the reader cannot open: temp files still go, no workspace or folder does."""
    r, layout = make(tmp_path, [{"id": "old", "state": "completed", "ended": 99}])
    shutil.rmtree(layout.wal_dir)
    layout.wal_dir.write_text("not a folder")
    tmp = touch(layout.root / ".tmp.x.1.aa", GRACE * 2)
    did = reaper.one_pass(r)
    assert ({"tmp": 1}, True, True) == ({k: n for k, n in did.items() if n},
                                        layout.job_dir("old").exists(),
                                        (r.cfg.workspace_dir / "old").exists())
    assert not tmp.exists()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_pass_on_a_disk_that_fails_writes_removes_nothing_half_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """Every write fails (full or failing disk): the pass raises nothing (each part is
    logged and tried again next pass), no job is forgotten that is not archived; once
    writes work the next pass archives and forgets it, once."""
    r, layout = make(tmp_path, [{"id": "old", "state": "completed", "ended": 31},
                                {"id": "run", "state": "running"}])
    disk = BadDisk(monkeypatch, error)
    disk.broken = True
    reaper.one_pass(r)
    records, _ = archive.read(layout)
    assert (True, [], []) == (disk.refused > 0, records, forget_requests(layout))
    assert (True, True) == (layout.job_dir("run").exists(),
                            (r.cfg.workspace_dir / "run").exists())
    disk.broken = False
    reaper.one_pass(r)
    records, notes = archive.read(layout)
    assert ([("old", "completed")], [], [["old"]], False) == (
        [(x["id"], x["state"]) for x in records], notes, forget_requests(layout),
        layout.job_dir("old").exists())


def test_clean_forgets_now_and_replies_with_what_went(tmp_path: Path) -> None:
    """clean {older_than, states}: the finished jobs it selects are forgotten at once and
    listed in the reply; a replay of the request changes nothing."""
    r, layout = make(tmp_path, [
        {"id": "a", "state": "failed", "ended": 0.5}, {"id": "b", "state": "completed",
                                                      "ended": 2},
        {"id": "c", "state": "lost", "ended": 3}, {"id": "d", "state": "running"}])
    req = {"id": "clean-1", "kind": "clean", "older_than": DAY, "states": ["completed", "lost"]}
    reaper.clean(r, req)
    reply = read_record(REPLY, layout.reaper_replies / "clean-1.json", owner=False)
    assert isinstance(reply, dict)
    assert (True, ["b", "c"], [["b", "c"]]) == (
        reply["ok"], [x["id"] for x in reply["result"]], forget_requests(layout))
    reaper.clean(r, req)
    assert [["b", "c"]] == forget_requests(layout)


def test_a_corrupt_record_restarts_the_totals_and_is_said(tmp_path: Path) -> None:
    """A corrupt reaper/state.json is moved aside, noted as degraded; the reaper reaps."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    touch(layout.worker_state("reaper"), 0).write_bytes(b"{oops")
    r, _, _, degraded = reaper.recover(cfg, layout, _log.get("test"))
    moved = [n for n in os.listdir(layout.worker_dir("reaper")) if CORRUPT_MARK in n]
    assert ([f"reaper state was corrupt: moved to {layout.worker_dir('reaper') / moved[0]}"],
            0) == (degraded, sum(r.totals.values()))


def test_main_serves_clean_requests_and_passes_every_interval(tmp_path: Path) -> None:
    """After ready, the running reaper answers a clean request and removes a stale temp
    file at its next interval."""
    cfg = make_cfg(tmp_path, interval=0.2)
    layout = build(cfg, [{"id": "a", "state": "completed", "ended": 0}], time.time())
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(reaper.main(cfg)))
    worker.start()
    try:
        until("ready", layout.ready_file("reaper").exists)
        rec = read_record(READY, layout.ready_file("reaper"), owner=False)
        assert isinstance(rec, dict)
        stale = touch(cfg.state_dir / "reaper" / ".tmp.late.1.aa", GRACE * 2)
        until("the sweep", lambda: not stale.exists())
        send_request(layout, "reaper", {"id": "c1", "kind": "clean", "older_than": 0})
        until("the reply", (layout.reaper_replies / "c1.json").exists)
    finally:
        _runtime.request_stop()
        worker.join(30)
    assert ([0], [["a"]]) == (result, forget_requests(layout))


# -- the property: random mixes, two passes ---------------------------------------------------

#: (state, days since its end — never exactly a retention boundary —, has a folder, has a
#: workspace, index of a job it names, how it names it, heartbeat age if running, wants
#: the lock).
JOBS = st.lists(st.tuples(st.sampled_from(JOB_STATES),
                          st.integers(0, 60).filter(lambda d: d not in (7, 30)),
                          st.booleans(), st.booleans(), st.integers(-1, 9),
                          st.sampled_from(["", "after", "resume_of"]),
                          st.sampled_from([1.0, 60.0, DAY]), st.booleans()),
                min_size=1, max_size=10)


def _lock_table(cfg: Config, wanting: list[str], now: float) -> None:
    """The locks worker's table, made by the worker itself before the WAL exists (so
    nothing reconciles it): the first of `wanting` holds `app`, the others wait, all
    granted or asked 2 x the grace ago."""
    lcfg = Config(state_dir=cfg.state_dir, workspace_dir=cfg.workspace_dir,
                  repositories={"app": RepoConfig(url="/nowhere.git", exclusive=True)})
    layout = Layout(cfg.state_dir)
    lk, _, _, _ = locks.recover(lcfg, layout, _log.get("test"),
                                clock=MockClock(now - 2 * GRACE))
    for seq, job in enumerate(wanting, 1):
        send_request(layout, "locks", acquire_request(
            job, ["app"], exclusive=True, seq=seq, created_at=iso_now(now - 2 * GRACE)))
    locks.one_pass(lk)


def _reap_requests(layout: Layout) -> set[str]:
    inbox = layout.inbox("locks")
    out: set[str] = set()
    for name in os.listdir(inbox) if inbox.exists() else []:
        rec = read_record(REQUEST, inbox / name, owner=False)
        if isinstance(rec, dict) and rec["kind"] == "reap":
            out.update(rec["jobs"])
    return out


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=JOBS, strays=st.lists(st.sampled_from(["ghost", ".prep.j0", ".prep.zz", ".reap.q"]),
                                  max_size=3, unique=True),
       lock_ghost=st.booleans())
def test_never_touches_the_live_and_leaves_nothing_reapable_after_two_passes(
        tmp_path_factory: Any, jobs: list[tuple[str, int, bool, bool, int, str, float, bool]],
        strays: list[str], lock_ghost: bool) -> None:
    """Any mix of live jobs (running ones with fresh, stale or dead heartbeats: only the
    scheduler decides a job is lost), finished jobs of any age, some naming others, with
    or without folders, workspaces and locks, plus strays and a lock of an unknown job:
    after two passes the state is what retention says, judged here from the rules
    themselves (not the reaper's verdict functions): every live job keeps its record,
    folder, workspace and lock; a finished job past retention.jobs that no live job names
    is forgotten with its folder and workspace; a finished job's workspace past
    retention.workspaces goes unless a live job resumes it; strays go unless they are a
    live job's half-made workspace; the locks of finished and unknown jobs are asked of
    the locks worker, those of live jobs never."""
    tmp_path = tmp_path_factory.mktemp("mix")
    now = time.time()
    cfg = make_cfg(tmp_path, retention=RetentionConfig(jobs=30 * DAY, workspaces=7 * DAY))
    specs = []
    for i, (state, ended, folder, ws, ref, how, _, _) in enumerate(jobs):
        spec: dict[str, Any] = {"id": f"j{i}", "state": state, "folder": folder,
                                "workspace_made": ws,
                                "ended": ended if state in TERMINAL_STATES else None}
        if how and 0 <= ref < len(jobs) and ref != i:
            spec[how] = [f"j{ref}"] if how == "after" else f"j{ref}"
        specs.append(spec)
    wanting = [f"j{i}" for i, job in enumerate(jobs) if job[7]] + (["lg"] if lock_ghost else [])
    _lock_table(cfg, wanting, now)
    layout = build(cfg, specs, now)
    for i, job in enumerate(jobs):
        if job[0] == "running" and specs[i]["folder"]:
            aged(touch(layout.job_dir(f"j{i}") / "sentinel.json", job[6]), job[6])
    for name in strays:
        aged(touch(cfg.workspace_dir / name / "f", GRACE * 2).parent, GRACE * 2)
    write_submission(layout, [{"id": "pend", "agent": "shell", "prompt": "x", "repos": [],
                               "after": ["j0"]}])
    r = reaper.Reaper(cfg, layout, _log.get("test"), MockClock(now))
    reaper.one_pass(r)
    reaper.one_pass(r)

    live = {s["id"] for s in specs if s["state"] in LIVE}
    named = {"j0"} | {str(v if isinstance(v, str) else v[0]) for s in specs
                      if s["state"] in LIVE for k, v in s.items() if k in ("after", "resume_of")}
    resumed = {str(s["resume_of"]) for s in specs if s["state"] in LIVE and "resume_of" in s}
    forgotten = {j for ids in forget_requests(layout) for j in ids}
    expect_forgotten = {s["id"] for s in specs if s["state"] in TERMINAL_STATES
                        and s["ended"] > 30 and s["id"] not in named}
    assert expect_forgotten == forgotten
    for s in specs:
        j, gone = s["id"], s["id"] in expect_forgotten
        ws_goes = gone or (s["state"] in TERMINAL_STATES and s["ended"] > 7 and j not in resumed)
        assert (s["folder"] and not gone, s["workspace_made"] and not ws_goes) == (
            layout.job_dir(j).exists(), (cfg.workspace_dir / j).exists()), s
    for name in strays:
        kept = name == ".prep.j0" and "j0" in live
        assert kept == (cfg.workspace_dir / name).exists(), name
    states = {s["id"]: s["state"] for s in specs}
    assert {j for j in wanting if states.get(j) not in LIVE} == _reap_requests(layout)


def test_a_workspace_a_finished_resume_shared_is_kept_for_its_end(tmp_path: Path) -> None:
    """Through the real queue (its byte search for resumed jobs): a workspace a resumed
    job used stays until retention.workspaces after that job's end, not its first owner's
    — even once the first owner is forgotten."""
    now = time.time()
    cfg = make_cfg(tmp_path)
    ws = cfg.workspace_dir / "ses"
    layout = build(cfg, [
        {"id": "ses", "state": "completed", "ended": 31},
        {"id": "r", "state": "completed", "ended": 1, "resume_of": "ses",
         "workspace": str(ws), "workspace_made": False}], now)
    r = reaper.Reaper(cfg, layout, _log.get("test"), MockClock(now))
    did = reaper.one_pass(r)                       # ses is forgotten (31 d), not its workspace
    assert ((1, 0, True), [["ses"]]) == ((did["jobs"], did["workspaces"], ws.exists()),
                                         forget_requests(layout))
    assert (0, True) == (reaper.one_pass(r)["workspaces"], ws.exists())
