"""The api's routes over real HTTP (the api worker alone on 127.0.0.1, no batchd): every
endpoint, every scope, every kind of bad input, and the equality with batchctl's --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.layout import Layout
from supervisor.state.queue import JobQueue
from tests.helpers import submitted_jobs, until
from tests.httpkit import ApiProc, Client, config_text, make_tokens

ROOT = Path(__file__).resolve().parents[2]


class Env:
    """One state dir with an api serving it and a token per scope."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.cfg = root / "batchd.yaml"
        self.cfg.write_text(config_text(self.state))
        self.layout = Layout(self.state)
        self.tokens = make_tokens(self.cfg)
        self.api = ApiProc(self.cfg, root / "api.log").start()

    def client(self, scope: str | None = "admin") -> Client:
        return Client(self.api.address, self.tokens[scope] if scope else None)

    def ctl(self, *argv: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(self.cfg),
                               *argv, "--json"], capture_output=True, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert 0 == done.returncode, done.stderr
        return json.loads(done.stdout)

    def pending_jobs(self) -> list[dict[str, Any]]:
        return submitted_jobs(self.layout)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("api"))
    try:
        yield e
    finally:
        assert 0 == e.api.stop()


def _error(status: int, body: Any) -> tuple[int, str]:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return status, body["error"]["code"]


# -- auth ------------------------------------------------------------------------------------

READS = ["/v1/jobs", "/v1/status", "/v1/locks", "/v1/callbacks", "/v1/batches",
         "/v1/stats", "/metrics", "/v1/openapi.json", "/v1/token"]


@pytest.mark.parametrize("path", READS)
def test_every_read_route_needs_a_valid_token(env: Env, path: str) -> None:
    """No token, a wrong one, a malformed header: 401 with the error document."""
    c = env.client(None)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer "}):
        status, hdrs, data = c.request("GET", path, token=None, headers=headers)
        assert (401, "unauthorized") == _error(status, json.loads(data))
        assert hdrs["www-authenticate"].startswith("Bearer")
    status, _, _ = env.client("read").request("GET", path)
    assert 200 == status


@pytest.mark.parametrize(("method", "path", "need"), [
    ("POST", "/v1/jobs", "submit"),
    ("POST", "/v1/jobs/nope/cancel", "submit"),
    ("POST", "/v1/jobs/nope/retry", "submit"),
    ("POST", "/v1/pause", "admin"),
    ("POST", "/v1/resume", "admin"),
    ("POST", "/v1/workers/locks/restart", "admin"),
])
def test_a_short_scope_is_403_and_writes_nothing(env: Env, method: str, path: str,
                                                 need: str) -> None:
    """read < submit < admin: a token below what the route needs gets 403, nothing queued."""
    before = env.pending_jobs()
    weaker = {"submit": ["read"], "admin": ["read", "submit"]}[need]
    for scope in weaker:
        status, body = env.client(scope).json(method, path, {"agent": "shell", "prompt": "x"})
        assert (403, "forbidden") == _error(status, body)
        assert need in body["error"]["message"]
    assert before == env.pending_jobs()


def test_the_token_route_names_the_token_and_its_scope(env: Env) -> None:
    """GET /v1/token: what the dashboard asks to show the right buttons."""
    for scope in ("read", "submit", "admin"):
        assert (200, {"name": scope, "scope": scope}) == env.client(scope).json("GET",
                                                                                 "/v1/token")


def test_a_revoked_token_is_refused_at_the_next_request(env: Env) -> None:
    """The tokens file is re-read when it changes: a revoke takes effect at once."""
    from supervisor.config import load
    from supervisor.state.tokens import add, revoke, tokens_path

    path = tokens_path(load(str(env.cfg)), env.layout)
    token = add(path, "temp", "read")
    c = Client(env.api.address, token)
    assert 200 == c.json("GET", "/v1/token")[0]
    revoke(path, "temp")
    assert 401 == c.json("GET", "/v1/token")[0]


def test_the_token_never_reaches_the_log(env: Env) -> None:
    """Tokens (and their hashes) are never logged, even for refused requests."""
    env.client(None).request("GET", "/v1/status", token="bdt_not-a-real-token")
    text = (env.root / "api.log").read_text()
    assert [] == [t for t in [*env.tokens.values(), "bdt_not-a-real-token"] if t in text]


# -- submissions -----------------------------------------------------------------------------

def test_post_one_job_is_201_with_its_id_and_one_durable_request(env: Env) -> None:
    """One job object: 201 {"ids": [id]}; the request in the scheduler's inbox holds it,
    checked and normalized exactly as batchctl submit would (timeout in seconds)."""
    status, body = env.client("submit").json("POST", "/v1/jobs", {
        "agent": "shell", "prompt": "echo hi", "timeout": "2m", "batch": "b1"})
    assert 201 == status
    [job_id] = body["ids"]
    [job] = [j for j in env.pending_jobs() if j["id"] == job_id]
    assert ("shell", "echo hi", 120.0, "b1", []) == (job["agent"], job["prompt"],
                                                      job["timeout"], job["batch"], job["repos"])


def test_post_many_jobs_is_all_or_nothing(env: Env) -> None:
    """{"jobs": [...]}: ids in order; one bad job (named by its index) queues none."""
    c = env.client("submit")
    before = len(env.pending_jobs())
    status, body = c.json("POST", "/v1/jobs", {"jobs": [
        {"agent": "shell", "prompt": "a"}, {"agent": "cluade", "prompt": "b"}]})
    assert (422, "invalid") == _error(status, body)
    assert "jobs[1]: unknown agent 'cluade'" == body["error"]["message"]
    assert before == len(env.pending_jobs())
    status, body = c.json("POST", "/v1/jobs", {"jobs": [
        {"agent": "shell", "prompt": "a", "id": "many-1"}, {"agent": "shell", "prompt": "b"}]})
    assert 201 == status
    assert "many-1" == body["ids"][0] and 2 == len(body["ids"])


@pytest.mark.parametrize(("body", "status", "code", "names"), [
    (b"{not json", 400, "bad_json", "not valid JSON"),
    (b"\xff\xfe", 400, "bad_json", "not UTF-8"),
    (b'{"agent": "shell", "agent": "shell", "prompt": "x"}', 400, "bad_json", "'agent'"),
    (b'[1, 2]', 422, "invalid", "expected a JSON object"),
    (b'{"agent": "shell", "prompt": "x", "colour": 1}', 422, "invalid", "'colour'"),
    (b'{"agent": 3, "prompt": "x"}', 422, "invalid", "agent must be a string"),
    (b'{"agent": "shell"}', 422, "invalid", "missing key 'prompt'"),
    (b'{"agent": "nope", "prompt": "x"}', 422, "invalid", "unknown agent 'nope'"),
    (b'{"agent": "shell", "prompt": "x", "id": "../etc"}', 422, "invalid", "invalid job id"),
    (b'{"agent": "shell", "prompt": "x", "callback": "ftp://h/x"}', 422, "invalid",
     "callback URL"),
    (b'{"agent": "shell", "prompt": "x", "timeout": "soon"}', 422, "invalid", "timeout"),
    (b'{"agent": "shell", "prompt": "x", "repos": ["nowhere"]}', 422, "invalid",
     "unknown repository"),
    (b'{"agent": "shell", "prompt": "x", "push": true}', 422, "invalid",
     "push needs a repository"),
    (b'{"jobs": []}', 422, "invalid", "non-empty"),
    (b'{"jobs": [{"agent": "shell", "prompt": "a", "id": "d"}, '
     b'{"agent": "shell", "prompt": "b", "id": "d"}]}', 422, "invalid", "duplicate job id"),
    (b'{"agent": "shell", "prompt": "x\\ud800"}', 422, "invalid",
     "prompt is not valid UTF-8 text"),
    (b'{"agent": "shell", "prompt": "x", "batch": "\\udfff"}', 422, "invalid",
     "batch is not valid UTF-8 text"),
    (b'{"agent": "shell", "prompt": "x", "callback": "http://h/\\ud800"}', 422, "invalid",
     "callback is not valid UTF-8 text"),
    (b'{"agent": "shell", "prompt": "x", "labels": {"k": "\\ud800"}}', 422, "invalid",
     "label 'k' is not valid UTF-8 text"),
    (b'{"agent": "shell", "prompt": "a\\u0000b"}', 422, "invalid", "prompt contains a NUL"),
    (b'{"agent": "shell", "prompt": "x", "timeout": "99999999999d"}', 422, "invalid",
     "timeout: expected a duration of at most 36500d"),
    (b'{"agent": "shell", "prompt": "x", "not_before": "9999-12-31T23:59:59-01:00"}', 422,
     "invalid", "not_before"),
    (b'{"agent": "shell", "prompt": "x", "timeout": NaN}', 400, "bad_json",
     "NaN is not a JSON value"),
    (b'{"agent": "shell", "prompt": "x", "priority": ' + b"9" * 5000 + b"}", 400, "bad_json",
     "a number too long to read"),
])
def test_bad_submissions_are_4xx_naming_the_field_and_queue_nothing(
        env: Env, body: bytes, status: int, code: str, names: str) -> None:
    """Malformed JSON is 400; a job the validator refuses is 422 naming the key; never a
    500, never a traceback; nothing reaches the inbox."""
    before = len(env.pending_jobs())
    got, _, data = env.client("submit").request("POST", "/v1/jobs", body)
    doc = json.loads(data)
    assert (status, code) == _error(got, doc)
    assert names in doc["error"]["message"]
    assert "Traceback" not in data.decode()
    assert before == len(env.pending_jobs())


def test_a_bad_submission_among_concurrent_good_ones_fails_alone(env: Env) -> None:
    """Concurrent POSTs are gathered into one write: a bad body among them (a lone
    surrogate, which used to pass the validator and fail the shared write) is 422 on its
    own, and every good one is 201 and queued (it was a 500 for all of them)."""
    from concurrent.futures import ThreadPoolExecutor

    def post(i: int) -> tuple[int, Any]:
        prompt = "bad \\ud800" if i % 4 == 0 else f"good {i}"
        body = '{"agent": "shell", "prompt": "' + prompt + f'", "id": "grp-{i}"}}'
        c = env.client("submit")
        try:
            status, _, data = c.request("POST", "/v1/jobs", body)
        finally:
            c.close()
        return status, json.loads(data)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(post, range(48)))
    bad = [(s, b["error"]["code"]) for i, (s, b) in enumerate(got) if i % 4 == 0]
    good = [(s, b) for i, (s, b) in enumerate(got) if i % 4]
    assert [(422, "invalid")] * 12 == bad
    assert [(201, {"ids": [f"grp-{i}"]}) for i in range(48) if i % 4] == good
    pending = {j["id"] for j in env.pending_jobs()}
    assert ({f"grp-{i}" for i in range(48) if i % 4}, set()) == (
        pending & {f"grp-{i}" for i in range(48)} - {f"grp-{i}" for i in range(0, 48, 4)},
        pending & {f"grp-{i}" for i in range(0, 48, 4)})


@pytest.mark.parametrize(("query", "names"), [
    ("since=99999999999d", "since: '99999999999d' is neither"),
    ("since=9999-12-31T23:59:59-01:00", "since: '9999-12-31T23:59:59-01:00' is neither"),
    ("limit=-1", "limit"),
    ("limit=99999999999999999999999", "limit"),
])
def test_bad_list_parameters_are_400_naming_them(env: Env, query: str, names: str) -> None:
    """GET /v1/jobs with a since past year 9999 was a 500 ("year out of range"): 400 naming
    the parameter, as every other bad parameter."""
    status, body = env.client("read").json("GET", f"/v1/jobs?{query}")
    assert (400, "bad_parameter") == _error(status, body)
    assert names in body["error"]["message"]


def test_a_body_over_the_limit_is_413(env: Env) -> None:
    """A body over MAX_BODY: 413, told by Content-Length before it is read."""
    from supervisor.api.app import MAX_BODY

    big = b'{"agent": "shell", "prompt": "' + b"x" * (MAX_BODY + 10) + b'"}'
    status, _, data = env.client("submit").request("POST", "/v1/jobs", big)
    assert (413, "too_large") == _error(status, json.loads(data))


def test_a_replayed_submission_is_accepted_once_and_another_job_under_its_id_is_409(
        env: Env) -> None:
    """A client retrying the same id with the same job gets 201 and the same id, and only
    one job exists; the same id with a different job is 409."""
    c = env.client("submit")
    job = {"agent": "shell", "prompt": "echo once", "id": "replay-1"}
    assert (201, {"ids": ["replay-1"]}) == c.json("POST", "/v1/jobs", job)
    assert (201, {"ids": ["replay-1"]}) == c.json("POST", "/v1/jobs", job)
    assert 1 == sum(1 for j in env.pending_jobs() if j["id"] == "replay-1")
    status, body = c.json("POST", "/v1/jobs", {**job, "prompt": "something else"})
    assert (409, "conflict") == _error(status, body)
    assert "replay-1" in body["error"]["message"]


def test_what_the_api_accepts_batchctl_refuses_the_same(env: Env) -> None:
    """One validator: batchctl submit of the same bad job fails with the same message."""
    done = subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(env.cfg),
                           "submit", "--agent", "nope", "--prompt", "x"], capture_output=True,
                          text=True, check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    _, body = env.client("submit").json("POST", "/v1/jobs", {"agent": "nope", "prompt": "x"})
    assert (2, f"batchctl: {body['error']['message']}\n") == (done.returncode, done.stderr)


# -- reads -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "argv"), [
    ("/v1/status", ["status"]), ("/v1/locks", ["locks"]), ("/v1/callbacks", ["callbacks"]),
    ("/v1/batches", ["batches"]), ("/v1/stats", ["stats"]),
])
def test_documents_equal_batchctl_json(env: Env, path: str, argv: list[str]) -> None:
    """GET /v1/<doc> is exactly `batchctl <doc> --json` on the same state dir."""
    env.client("submit").json("POST", "/v1/jobs", {"agent": "shell", "prompt": "x",
                                                   "batch": "docs"})
    assert (200, env.ctl(*argv)) == env.client("read").json("GET", path)


def test_workers_is_503_while_batchd_is_down(env: Env) -> None:
    """As `batchctl workers` (exit 1), the workers document needs batchd running."""
    status, body = env.client("read").json("GET", "/v1/workers")
    assert (503, "not_running") == _error(status, body)


def test_one_job_and_its_batch(env: Env) -> None:
    """GET /v1/jobs/{id} is `batchctl status ID --json`; /v1/batches/{b} is `batch B`."""
    _, body = env.client("submit").json("POST", "/v1/jobs", {"agent": "shell", "prompt": "x",
                                                             "batch": "one"})
    [job_id] = body["ids"]
    c = env.client("read")
    assert (200, env.ctl("status", job_id)) == c.json("GET", f"/v1/jobs/{job_id}")
    assert (200, env.ctl("batch", "one")) == c.json("GET", "/v1/batches/one")
    assert (404, "not_found") == _error(*c.json("GET", "/v1/batches/none-such"))
    assert (404, "not_found") == _error(*c.json("GET", "/v1/jobs/none-such"))
    assert (400, "bad_id") == _error(*c.json("GET", "/v1/jobs/-bad"))


def test_job_pages_follow_the_cursor_and_filters(env: Env) -> None:
    """limit + next_cursor walk every job once in batchctl's order; filters apply."""
    c = env.client("submit")
    c.json("POST", "/v1/jobs", {"jobs": [{"agent": "shell", "prompt": str(i), "batch": "pg"}
                                         for i in range(7)]})
    want = [j["id"] for j in env.ctl("jobs", "--batch", "pg")]
    got: list[str] = []
    cursor = None
    while True:
        q = "/v1/jobs?batch=pg&limit=3" + (f"&cursor={cursor}" if cursor else "")
        status, page = c.json("GET", q)
        assert 200 == status and len(page["jobs"]) <= 3
        got += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert want == got
    _, newest = c.json("GET", "/v1/jobs?batch=pg&order=desc&limit=2")
    assert want[::-1][:2] == [j["id"] for j in newest["jobs"]]
    _, by_agent = c.json("GET", "/v1/jobs?agent=shell&state=queued&limit=1000")
    assert set(want) <= {j["id"] for j in by_agent["jobs"]}
    _, none = c.json("GET", "/v1/jobs?agent=claude")
    assert [] == none["jobs"]
    _, labelled = c.json("GET", "/v1/jobs?label=team=a")
    assert ([], None) == (labelled["jobs"], labelled["next_cursor"])
    _, later = c.json("GET", "/v1/jobs?since=2999-01-01T00:00:00Z")
    assert [] == later["jobs"]
    _, recent = c.json("GET", "/v1/jobs?since=1h&batch=pg")
    assert want == [j["id"] for j in recent["jobs"]]


@pytest.mark.parametrize(("query", "code"), [
    ("state=sleeping", "bad_parameter"), ("limit=0", "bad_parameter"),
    ("limit=abc", "bad_parameter"), ("limit=100000", "bad_parameter"),
    ("cursor=garbage!", "bad_cursor"), ("cursor=eyJ4IjoxfQ", "bad_cursor"),
    ("since=yesterday", "bad_parameter"), ("label=novalue", "bad_parameter"),
    ("colour=red", "bad_parameter"), ("order=up", "bad_parameter"),
    ("limit=1&limit=2", "bad_parameter"),
])
def test_bad_list_parameters_are_400(env: Env, query: str, code: str) -> None:
    """A bad state, limit, cursor, since, label, order or an unknown parameter: 400."""
    assert (400, code) == _error(*env.client("read").json("GET", f"/v1/jobs?{query}"))


def test_output_reads_bytes_from_an_offset(env: Env) -> None:
    """GET output?offset=N: the bytes from N, X-Batchd-Offset where to go on; a bad or
    too large offset is 400; an unknown job 404."""
    _, body = env.client("submit").json("POST", "/v1/jobs", {"agent": "shell", "prompt": "x"})
    [job_id] = body["ids"]
    out = env.layout.job_output(job_id)
    out.parent.mkdir(parents=True)
    out.write_bytes(b"hello \xc3\xa9\x00world")
    c = env.client("read")
    status, headers, data = c.request("GET", f"/v1/jobs/{job_id}/output?offset=6")
    assert (200, b"\xc3\xa9\x00world", "14") == (status, data, headers["x-batchd-offset"])
    assert (400, "bad_offset") == _error(*c.json("GET", f"/v1/jobs/{job_id}/output?offset=99"))
    assert (400, "bad_parameter") == _error(*c.json("GET",
                                                    f"/v1/jobs/{job_id}/output?offset=-1"))
    assert (404, "not_found") == _error(*c.json("GET", "/v1/jobs/ghost/output"))


def test_diff_is_the_patch_or_empty(env: Env) -> None:
    """GET diff: the job's patch file as it is, empty when the job changed nothing; a patch
    whose changes.json is not there (an adaptor killed between the two) is not shown."""
    _, body = env.client("submit").json("POST", "/v1/jobs", {"agent": "shell", "prompt": "x"})
    [job_id] = body["ids"]
    c = env.client("read")
    assert (200, b"") == c.request("GET", f"/v1/jobs/{job_id}/diff")[::2]
    patch = env.layout.job_patch(job_id)
    patch.parent.mkdir(parents=True, exist_ok=True)
    patch.write_bytes(b"diff --git a/x b/x\n")
    assert (200, b"") == c.request("GET", f"/v1/jobs/{job_id}/diff")[::2]
    env.layout.job_changes(job_id).write_text("{}")
    status, headers, data = c.request("GET", f"/v1/jobs/{job_id}/diff")
    assert (200, b"diff --git a/x b/x\n", "text/x-diff") == (
        status, data, headers["content-type"].split(";")[0])


def test_metrics_is_prometheus_text(env: Env) -> None:
    """GET /metrics: the text format, with the metrics the contract names."""
    status, headers, data = env.client("read").request("GET", "/metrics")
    text = data.decode()
    assert (200, "text/plain") == (status, headers["content-type"].split(";")[0])
    for name in ("batchd_jobs{", "batchd_jobs_submitted_total", "batchd_worker_up{",
                 "batchd_worker_restarts_total{", "batchd_callbacks_total{",
                 "batchd_queue_depth", "batchd_agent_cost_usd_total{",
                 "batchd_agent_tokens_total{", "# TYPE batchd_job_duration_seconds histogram"):
        assert name in text


def test_unknown_routes_and_methods_are_json_errors(env: Env) -> None:
    """404 and 405 are error documents too."""
    c = env.client("admin")
    assert (404, "not_found") == _error(*c.json("GET", "/v1/nothing"))
    assert (405, "method_not_allowed") == _error(*c.json("DELETE", "/v1/jobs"))


def test_the_dashboard_is_served_without_a_token(env: Env) -> None:
    """GET / and its static files need no token (they hold no data; the page asks for one)."""
    c = env.client(None)
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"),
                       ("/static/style.css", "text/css")):
        status, headers, _ = c.request("GET", path, token=None)
        assert (200, kind) == (status, headers["content-type"].split(";")[0])


# -- control ---------------------------------------------------------------------------------

def test_cancel_of_a_queued_job_is_requested(env: Env) -> None:
    """POST cancel: 202 with the request's id (as batchctl cancel --json); unknown 404."""
    c = env.client("submit")
    _, body = c.json("POST", "/v1/jobs", {"agent": "shell", "prompt": "x"})
    [job_id] = body["ids"]
    status, doc = c.json("POST", f"/v1/jobs/{job_id}/cancel")
    assert (202, job_id, "queued", True) == (status, doc["job"], doc["state"], doc["requested"])
    assert (404, "not_found") == _error(*c.json("POST", "/v1/jobs/ghost/cancel"))


def test_retry_needs_an_ended_job(env: Env) -> None:
    """POST retry of a job still queued: 409; of an unknown job: 404."""
    c = env.client("submit")
    _, body = c.json("POST", "/v1/jobs", {"agent": "shell", "prompt": "x"})
    [job_id] = body["ids"]
    assert (409, "conflict") == _error(*c.json("POST", f"/v1/jobs/{job_id}/retry"))
    assert (404, "not_found") == _error(*c.json("POST", "/v1/jobs/ghost/retry"))


def test_retry_of_an_ended_job_submits_its_spec_again(env: Env) -> None:
    """An ended job (in the queue) retried: a new job with its spec and retry_of."""
    with JobQueue.open(env.layout.wal_dir) as q:
        q.enqueue("ended-1", {"agent": "shell", "prompt": "echo again", "repos": [],
                              "batch": "rb", "timeout": 60.0, "exclusive": False,
                              "state": "failed"})
    status, doc = env.client("submit").json("POST", "/v1/jobs/ended-1/retry")
    assert (201, "ended-1") == (status, doc["retry_of"])
    _, rec = env.client("read").json("GET", f"/v1/jobs/{doc['id']}")
    assert ("ended-1", "queued", "shell", "rb") == (rec["retry_of"], rec["state"], rec["agent"],
                                                    rec["batch"])
    [job] = [j for j in env.pending_jobs() if j["id"] == rec["id"]]
    assert ("echo again", 60.0, "ended-1") == (job["prompt"], job["timeout"], job["retry_of"])


def test_pause_and_resume_are_durable_requests(env: Env) -> None:
    """POST pause/resume (admin): 202; status shows paused as the pending request asks."""
    c = env.client("admin")
    status, doc = c.json("POST", "/v1/pause")
    assert (202, True) == (status, doc["paused"])
    assert c.json("GET", "/v1/status")[1]["paused"] is True
    assert (202, False) == (c.json("POST", "/v1/resume")[0],
                            c.json("GET", "/v1/status")[1]["paused"])


def test_restart_needs_batchd_and_a_known_worker(env: Env) -> None:
    """POST workers/{w}/restart: 404 for a worker that does not exist; 503 with batchd
    down (nothing written)."""
    c = env.client("admin")
    assert (404, "not_found") == _error(*c.json("POST", "/v1/workers/nobody/restart"))
    assert (503, "not_running") == _error(*c.json("POST", "/v1/workers/locks/restart"))
    assert not env.layout.control_inbox.exists() or [] == os.listdir(env.layout.control_inbox)


def test_agents_are_batchctls_records_and_the_cache_is_not_written(env: Env) -> None:
    """GET /v1/agents: one record per configured agent with the contract's keys, as
    `batchctl agents --json`; the api never writes batchctl's version cache."""
    status, body = env.client("read").json("GET", "/v1/agents")
    assert 200 == status, body
    shell = next(r for r in body if r["name"] == "shell")
    assert ({"name", "adaptor", "command", "version", "found", "user", "max_concurrent"},
            "command", False) == (set(shell), shell["adaptor"],
                                  env.layout.agent_versions.exists())


def test_sigterm_stops_the_api_with_exit_0(tmp_path: Path) -> None:
    """A graceful stop: SIGTERM, exit 0, even with a client connected."""
    cfg = tmp_path / "batchd.yaml"
    cfg.write_text(config_text(tmp_path / "state"))
    tokens = make_tokens(cfg)
    api = ApiProc(cfg, tmp_path / "api.log").start()
    c = Client(api.address, tokens["read"])
    assert 200 == c.json("GET", "/v1/status")[0]
    assert 0 == api.stop()
    until("the port closed", lambda: _refused(api.address))


def _refused(address: tuple[str, int]) -> bool:
    import socket

    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return True
    return False



def test_a_submission_the_disk_cannot_take_is_503_not_500(tmp_path: Path) -> None:
    """When the one request write fails on the disk (OSError: ENOSPC, EIO) the POST is 503
    `storage` saying so, nothing queued (the failure reaches it through the submit writer's
    Future, not a 500). Driven in-process through the ASGI app, the failure injected into
    its submit writer."""
    import asyncio

    from supervisor import log as _log
    from supervisor.api.app import build_app, make_api
    from supervisor.api.submit import Batcher
    from supervisor.config import load
    from supervisor.state.tokens import add, tokens_path

    cfg_path = tmp_path / "batchd.yaml"
    cfg_path.write_text(config_text(tmp_path / "state"))
    cfg = load(str(cfg_path))
    layout = Layout(cfg.state_dir)
    token = add(tokens_path(cfg, layout), "w", "submit")
    api = make_api(cfg, layout, _log.get("api"))

    def full(*_: Any) -> list[Any]:
        raise OSError(28, "No space left on device", str(layout.inbox("scheduler")))

    api.batcher = Batcher(cfg, layout, write=full)
    app = build_app(api)
    body = b'{"agent": "shell", "prompt": "x"}'
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/jobs", "raw_path": b"/v1/jobs",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        api.batcher.close()
    doc = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert (503, "storage") == _error(sent[0]["status"], doc)
    assert ("the state dir cannot be used now (No space left on device); nothing was "
            "changed: try again later") == doc["error"]["message"]


def test_the_lean_post_path_answers_as_starlette_does(tmp_path: Path) -> None:
    """POST /v1/jobs skips Starlette's middleware and router (App.post_jobs); for every
    kind of answer (201, a replay's 201, 400, 401, 403, 409, 413, 422, 500) its messages
    are those of the same request through Starlette; an unexpected error is 500 and is
    raised on to the server, as Starlette's ServerErrorMiddleware does."""
    import asyncio

    from supervisor import log as _log
    from supervisor.api.app import App, build_app, make_api
    from supervisor.api.submit import Batcher
    from supervisor.config import load
    from supervisor.state.tokens import add, tokens_path

    cfg_path = tmp_path / "batchd.yaml"
    cfg_path.write_text(config_text(tmp_path / "state"))
    cfg = load(str(cfg_path))
    layout = Layout(cfg.state_dir)
    submit = add(tokens_path(cfg, layout), "w", "submit")
    read = add(tokens_path(cfg, layout), "r", "read")
    api = make_api(cfg, layout, _log.get("api"))
    api.batcher = Batcher(cfg, layout)
    app = build_app(api)
    assert isinstance(app, App)

    def run(asgi: Any, body: bytes, token: str | None = submit, query: bytes = b"",
            length: int | None = None) -> tuple[list[dict[str, Any]], str | None]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body) if length is None else length).encode())]
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/jobs",
                 "raw_path": b"/v1/jobs", "query_string": query, "root_path": "",
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "headers": headers}
        try:
            asyncio.run(asgi(scope, receive, send))
        except RuntimeError as exc:
            return sent, str(exc)
        return sent, None

    job = b'{"agent": "shell", "prompt": "x", "id": "lean-1"}'
    cases = {
        "201": (job, {}),                      # lean first: written; Starlette: a replay
        "409": (b'{"agent": "shell", "prompt": "y", "id": "lean-1"}', {}),
        "400 json": (b'{"agent": ', {}),
        "400 query": (job, {"query": b"x=1"}),
        "401": (job, {"token": None}),
        "403": (job, {"token": read}),
        "413": (job, {"length": 17 * 1024 * 1024}),
        "422": (b'{"agent": "cluade", "prompt": "x"}', {}),
    }
    try:
        for name, (body, kw) in cases.items():
            lean = run(app, body, **kw)
            full = run(app.starlette, body, **kw)
            assert (name, full) == (name, lean)
            assert (name, None) == (name, lean[1])
        assert [201, 409, 400, 400, 401, 403, 413, 422] == [
            run(app, body, **kw)[0][0]["status"] for body, kw in cases.values()]

        def boom(jobs: Any) -> Any:
            raise RuntimeError("a bug")

        api.batcher.submit_async = boom     # type: ignore[method-assign]
        other = b'{"agent": "shell", "prompt": "x"}'
        lean, full = run(app, other), run(app.starlette, other)
        assert full == lean
        assert (500, "a bug") == (lean[0][0]["status"], lean[1])
        assert {"error": {"code": "internal", "message": "internal error (logged by the "
                          "api worker)"}} == json.loads(lean[0][1]["body"])
    finally:
        api.batcher.close()
