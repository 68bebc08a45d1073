"""The job spec an adaptor reads (adaptors._spec): defaults, and every bad field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptors._spec import SpecError, parse_spec

MINIMAL = {"id": "j1", "adaptor": "command", "prompt": "true", "workspace": "/ws"}
JOB = Path("/state/jobs/j1")


def test_minimal_spec_gets_documented_defaults() -> None:
    """Only id/adaptor/prompt/workspace given: heartbeat 5s, grace 10s, no timeout, no user,
    no idle timeout, not a resume."""
    spec = parse_spec(MINIMAL, JOB)
    assert ("command", None, (), {}, None, 5.0, 10.0, None, None, str(JOB), None, None) == (
        spec.agent, spec.command, spec.args, spec.env, spec.timeout, spec.heartbeat_interval,
        spec.kill_grace, spec.user, spec.resume_session, spec.job_dir, spec.idle_timeout,
        spec.resume_of)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("id", "other", "id: 'other' does not match the job folder 'j1'"),
    ("args", "ls", "args: expected a list of strings"),
    ("env", {"A": 1}, "env: expected an object of string values"),
    ("workspace", "rel/ws", "workspace: expected an absolute path, found 'rel/ws'"),
    ("timeout", -1, "timeout: must be > 0, found -1"),
    ("timeout", "1h", "timeout: expected a number of seconds, found '1h'"),
    ("prompt", None, "prompt: expected a string, found NoneType"),
    ("command", "", "command: empty string (use null for the adaptor's default binary)"),
    ("idle_timeout", 0, "idle_timeout: must be > 0, found 0"),
    ("resume_of", "../x", "resume_of: not a job id: '../x'"),
])
def test_bad_spec_fields_are_named(field: str, value: object, message: str) -> None:
    """Each malformed field is refused with a message naming the key and the problem."""
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL, field: value}, JOB)
    assert message == str(caught.value)


def test_results_fields_are_read_with_their_defaults() -> None:
    """repos (name, path, url, base), push, the git author and created_at; without them:
    no repositories, no push, batchd <batchd@localhost>."""
    spec = parse_spec(MINIMAL, JOB)
    assert ((), None, ("batchd", "batchd@localhost"), None) == (
        spec.repos, spec.push, spec.author, spec.created_at)
    spec = parse_spec({**MINIMAL, "push": "batchd/j1", "created_at": "2027-01-01T00:00:00Z",
                       "git": {"author_name": "Bot", "author_email": "b@x"},
                       "repos": [{"name": "app", "path": "/ws", "url": "/srv/app.git",
                                  "base": "a" * 40}]}, JOB)
    assert ("batchd/j1", ("Bot", "b@x"), "app", "a" * 40) == (
        spec.push, spec.author, spec.repos[0].name, spec.repos[0].base)


@pytest.mark.parametrize(("repos", "message"), [
    ("app", "repos: expected a list"),
    (["app"], "repos[0]: expected an object"),
    ([{"name": "app", "path": "ws"}], "repos[0].path: expected an absolute path, found 'ws'"),
    ([{"name": "app", "path": "/ws", "base": "HEAD"}], "repos[0].base: not a commit id: 'HEAD'"),
])
def test_bad_repos_are_named(repos: object, message: str) -> None:
    """A malformed repository entry of the spec names its index and key."""
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL, "repos": repos}, JOB)
    assert message == str(caught.value)
