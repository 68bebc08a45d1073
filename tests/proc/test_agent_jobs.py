"""Agent jobs end to end: a real batchd and batchctl running the strict fake CLIs.

What an operator sees: the agent's verdict decides the state (a 401 is `failed` naming the
agent's message, even from aider's exit 0), `submit --resume` continues a session in the
same workspace, usage lands in the record and in `stats`, an agent silent for its
`idle_timeout` is `timed_out` with reason `idle`, and `agents` lists the binaries.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Rig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
import fakekit

AGENTS = """\
agents:
  claude:
    command: {bin}/claude
    env: {{ANTHROPIC_API_KEY: sk-test, FAKE_HOME: {home}, FAKE_RECORD: {home}/claude.json}}
  claude401:
    adaptor: claude
    command: {bin}/claude
    env: {{ANTHROPIC_API_KEY: sk-test, FAKE_HOME: {home}, FAKE_SCENARIO: auth401}}
  sleepy:
    adaptor: claude
    command: {bin}/claude
    idle_timeout: 1s
    env: {{ANTHROPIC_API_KEY: sk-test, FAKE_HOME: {home}, FAKE_HANG: "60"}}
  aider:
    command: {bin}/aider
    model: openai/gpt-4o
    env: {{OPENAI_API_KEY: sk-test, FAKE_HOME: {home}, FAKE_SCENARIO: auth401}}
  lazy: {{adaptor: aider, command: {bin}/aider}}
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One batchd for the module, its agents the strict fakes."""
    root = tmp_path_factory.mktemp("agentjobs")
    bin_dir, home = root / "bin", root / "home"
    home.mkdir()
    for name in ("claude", "aider"):
        fakekit.install_cli(bin_dir, name)
    rig = Rig(root, AGENTS.format(bin=bin_dir, home=home))
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


def test_a_completed_job_records_session_and_usage_and_the_exact_prompt(rig: Rig) -> None:
    """A claude job: completed, the session id and usage in its record, the reply in its
    output, the prompt (read from stdin by batchctl) reaching the CLI byte for byte."""
    job = rig.submit("--agent", "claude", "--prompt-file", "-",
                     stdin=fakekit.TRICKY_PROMPT.encode())
    rec = rig.finished(job)
    assert ("completed", None, 0) == (rec["state"], rec["reason"], rec["exit_code"])
    assert {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.000184, "turns": 1} \
        == rec["usage"]
    assert rec["session_id"] and rec["resume_of"] is None
    assert fakekit.TRICKY_PROMPT.encode() \
        == fakekit.recorded_prompt(rig.root / "home" / "claude.json")
    assert b'MOCK-REPLY: say hi there "quoted" -dash' in rig.output(job)


def test_an_agent_error_fails_the_job_naming_the_message(rig: Rig) -> None:
    """claude's 401 (exit 1) and aider's 401 (exit 0!): both failed, reason = the agent's."""
    claude = rig.finished(rig.submit("--agent", "claude401", "--prompt", "hi"))
    assert ("failed", "agent error: Invalid API key · Fix external API key", 1) \
        == (claude["state"], claude["reason"], claude["exit_code"])
    aider = rig.finished(rig.submit("--agent", "aider", "--prompt", "hi"))
    assert ("failed", 0) == (aider["state"], aider["exit_code"])
    assert aider["reason"].startswith("agent error: litellm.AuthenticationError: "
                                      "AuthenticationError: OpenAIException - Incorrect API key")


def test_resume_continues_the_session_in_the_same_workspace(rig: Rig) -> None:
    """submit --resume J (no --agent): J's agent, session and workspace; resume_of J."""
    first = rig.finished(rig.submit("--agent", "claude", "--prompt", "one"))
    second = rig.finished(rig.submit("--resume", first["id"], "--prompt", "two"))
    assert ("completed", "claude", first["session_id"], first["workspace"], first["id"]) == (
        second["state"], second["agent"], second["session_id"], second["workspace"],
        second["resume_of"])


def test_resume_refusals_exit_2_and_name_why(rig: Rig) -> None:
    """Unknown job, a job without a session (a failed start), a gone workspace: exit 2."""
    done = rig.ctl("submit", "--resume", "ghost", "--prompt", "x")
    assert (2, b"batchctl: resume: no such job 'ghost'\n") == (done.returncode, done.stderr)
    shell = rig.finished(rig.submit("--agent", "shell", "--prompt", "true"))
    done = rig.ctl("submit", "--resume", shell["id"], "--prompt", "x")
    assert 2 == done.returncode
    assert b"has no session id" in done.stderr
    job = rig.finished(rig.submit("--agent", "claude", "--prompt", "one"))
    for path in sorted(Path(job["workspace"]).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    Path(job["workspace"]).rmdir()
    done = rig.ctl("submit", "--resume", job["id"], "--prompt", "x")
    assert 2 == done.returncode
    assert b"no longer exists" in done.stderr


def test_aider_without_a_model_is_refused_at_submit(rig: Rig) -> None:
    """An aider agent with no model: exit 2, nothing queued."""
    done = rig.ctl("submit", "--agent", "lazy", "--prompt", "x")
    assert 2 == done.returncode
    assert b"agent 'lazy' has no model" in done.stderr


def test_a_silent_agent_is_stopped_as_idle(rig: Rig) -> None:
    """An agent that says nothing for its idle_timeout (1 s): timed_out, reason idle."""
    rec = rig.finished(rig.submit("--agent", "sleepy", "--prompt", "x"))
    assert ("timed_out", "idle") == (rec["state"], rec["reason"])


def test_stats_sum_usage_per_agent(rig: Rig) -> None:
    """stats: every finished job's usage summed, in all and per agent; cost in dollars."""
    before = rig.json("stats")
    rig.finished(rig.submit("--agent", "claude", "--prompt", "count me"))
    after = rig.json("stats")
    mine = after["usage_by_agent"]["claude"]
    was = before["usage_by_agent"].get("claude", {"input_tokens": 0, "jobs": 0,
                                                  "cost_usd": 0.0})
    assert (11, 1) == (mine["input_tokens"] - was["input_tokens"], mine["jobs"] - was["jobs"])
    assert abs(mine["cost_usd"] - was["cost_usd"] - 0.000184) < 1e-6
    assert after["usage"]["input_tokens"] >= mine["input_tokens"]
    assert after["completed"] == before["completed"] + 1


def test_agents_lists_the_configured_binaries(rig: Rig) -> None:
    """agents --json: the fake claude found with its version; a missing one not found."""
    by_name = {r["name"]: r for r in rig.json("agents")}
    assert (True, "2.1.332", str(rig.root / "bin" / "claude")) == (
        by_name["claude"]["found"], by_name["claude"]["version"], by_name["claude"]["command"])
