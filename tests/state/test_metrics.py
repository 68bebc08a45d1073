"""Metrics of a state dir: the families the contract names, from the same files batchctl
reads, in prometheus-client's text format; the finished-job cache follows the queue."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from supervisor.config import Config
from supervisor.state.layout import DELIVERY, PRUNED, WORKERS, Layout, write_record
from supervisor.state.metrics import BUCKETS, Metrics, write_textfile
from supervisor.state.queue import JobQueue
from supervisor.state.webhook import begin, delivery_request, new_delivery


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _job(agent: str, state: str, started: str, finished: str, **extra: object) -> dict:
    return {"agent": agent, "prompt": "p", "state": state, "started_at": started,
            "finished_at": finished, **extra}


def test_families_count_jobs_durations_usage_and_workers(tmp_path: Path) -> None:
    """jobs per state, queue depth, submitted, the duration histogram by agent and state,
    cost and tokens by agent, worker up and restarts (workers.json), callbacks."""
    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    layout = Layout(tmp_path)
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue_many([
            ("a", _job("claude", "completed", "2027-01-01T00:00:00Z", "2027-01-01T00:00:10Z",
                       usage={"cost_usd": 0.5, "input_tokens": 100, "output_tokens": 7})),
            ("b", _job("claude", "failed", "2027-01-01T00:00:00Z", "2027-01-01T01:00:00Z")),
            ("c", {"agent": "shell", "prompt": "p"}),
        ], count="submitted")
    write_record(WORKERS, layout.workers_file, {"workers": [
        {"name": "scheduler", "state": "RUNNING", "restarts": 1, "restarts_total": 4}]})
    s = _samples(Metrics(cfg, layout))
    assert 1.0 == s[("batchd_jobs", (("state", "completed"),))]
    assert 1.0 == s[("batchd_jobs", (("state", "queued"),))]
    assert 0.0 == s[("batchd_jobs", (("state", "lost"),))]
    assert 1.0 == s[("batchd_queue_depth", ())]
    assert 3.0 == s[("batchd_jobs_submitted_total", ())]
    key = (("agent", "claude"), ("state", "completed"))
    assert 1.0 == s[("batchd_job_duration_seconds_count", key)]
    assert 10.0 == s[("batchd_job_duration_seconds_sum", key)]
    assert 1.0 == s[("batchd_job_duration_seconds_bucket", (*key[:1], ("le", "15.0"),
                                                            key[1]))]
    assert 0.0 == s[("batchd_job_duration_seconds_bucket", (*key[:1], ("le", "5.0"), key[1]))]
    assert 0.5 == s[("batchd_agent_cost_usd_total", (("agent", "claude"),))]
    assert 100.0 == s[("batchd_agent_tokens_total", (("agent", "claude"), ("kind", "input")))]
    assert 7.0 == s[("batchd_agent_tokens_total", (("agent", "claude"), ("kind", "output")))]
    assert 0.0 == s[("batchd_worker_up", (("worker", "scheduler"),))]   # batchd is not running
    assert 0.0 == s[("batchd_callbacks_total", (("outcome", "delivered"),))]
    assert len(BUCKETS) + 1 == sum(1 for n, _ in s if n == "batchd_job_duration_seconds_bucket"
                                   and ("agent", "claude") in _ and ("state", "failed") in _)


def test_the_cache_decodes_only_new_jobs_and_drops_forgotten_ones(tmp_path: Path) -> None:
    """A second exposition reads no body it read before; a job the queue no longer holds
    leaves the sums."""
    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    layout = Layout(tmp_path)
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue("a", _job("shell", "completed", "2027-01-01T00:00:00Z",
                            "2027-01-01T00:00:02Z", usage={"cost_usd": 1.0}))
    m = Metrics(cfg, layout)
    m.exposition()
    seen: list[str] = []
    original = m._refresh

    def spy(finished, get):  # type: ignore[no-untyped-def]
        return original(finished, lambda i: (seen.append(i), get(i))[1])

    m._refresh = spy  # type: ignore[method-assign]
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue("b", _job("shell", "failed", "2027-01-01T00:00:00Z", "2027-01-01T00:00:01Z"))
    s = _samples(m)
    assert ["b"] == seen
    assert 1.0 == s[("batchd_agent_cost_usd_total", (("agent", "shell"),))]
    m._refresh(["b"], lambda i: None)                     # as if "a" were forgotten
    assert 0.0 == m._cost["shell"]


def test_the_textfile_is_replaced_atomically(tmp_path: Path) -> None:
    """write_textfile: the folder made if missing, no temp file left."""
    path = tmp_path / "node" / "batchd.prom"
    write_textfile(path, b"# one\n")
    write_textfile(path, b"# two\n")
    assert (b"# two\n", ["batchd.prom"]) == (path.read_bytes(), sorted(p.name for p in
                                                                      path.parent.iterdir()))


def test_callbacks_total_keeps_the_records_retention_removed(tmp_path: Path) -> None:
    """batchd_callbacks_total counts the settled records on disk plus those removed past
    retention.callbacks (callbacks/pruned.json), a record the last removal names but that
    is still on disk (a crash in it) once."""
    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    layout = Layout(tmp_path)
    layout.callbacks_done.mkdir(parents=True)
    for event_id in ("e1", "e2"):
        rec = begin(new_delivery(delivery_request(event_id, "http://127.0.0.1:9/", {},
                                                  job="j"), 1.8e9), 1.8e9)
        write_record(DELIVERY, layout.callbacks_done / f"{event_id}.json",
                     {**rec, "state": "delivered", "next_attempt_at": None})
    write_record(PRUNED, layout.callbacks_pruned, {"delivered": 5, "failed": 2,
                                                   "step": ["e2"]})
    s = _samples(Metrics(cfg, layout))
    assert (6.0, 2.0) == (s[("batchd_callbacks_total", (("outcome", "delivered"),))],
                          s[("batchd_callbacks_total", (("outcome", "failed"),))])
