"""The real agent CLIs through a real batchd, against mock model servers (`make test-agents`).

Not part of `make test` (marker `agents`): `make test-agents` installs claude, gemini, codex,
opencode and aider at the versions the adaptors were verified against (tests/agents/
install.py), then runs this module inside a network namespace that has only a loopback
interface, so nothing can leave the machine; mockllm.py (127.0.0.1) answers as Anthropic,
OpenAI (Responses and Chat Completions) and Gemini do, and logs every request. Each CLI is
pointed at it through its own settings; a second agent per CLI points at the mock's `/401`
prefix, where every model call is answered with that provider's real 401.

Per CLI: a job completes, its output holds the mock's reply and a model request carries the
100 KB prompt byte for byte; the 401 agent's job is `failed` naming the CLI's error; `submit
--resume` runs a job whose request carries the earlier turn; usage is in the records and in
`stats`. The q adaptor is not here: neither q nor kiro-cli can be installed from a registry.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import Rig, git, until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
import fakekit

pytestmark = [pytest.mark.agents, pytest.mark.timeout(900)]

CLIS = ("claude", "gemini", "codex", "opencode", "aider")
MOCK = Path(__file__).resolve().parent / "mockllm.py"
MODEL_PATHS = ("/messages", "/responses", "/chat/completions", ":generateContent",
               ":streamGenerateContent")
#: What the 401 agent's failure reason shows of each CLI's own message.
AUTH_ERROR = {"claude": "Invalid API key", "gemini": "API error 401",
              "codex": "401 Unauthorized", "opencode": "Incorrect API key",
              "aider": "AuthenticationError"}


# -- the CLIs, the mock, batchd -------------------------------------------------------------

@pytest.fixture(scope="module")
def clis() -> dict[str, str]:
    """The installed CLIs (install.py's env file), in a loopback-only namespace only."""
    env_file = os.environ.get("BATCHD_AGENTS_ENV")
    if not env_file:
        pytest.skip("run by `make test-agents` (BATCHD_AGENTS_ENV names the installed CLIs)")
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        pytest.skip(f"not in a loopback-only network namespace (interfaces: {interfaces}); "
                    "run `make test-agents`")
    found: dict[str, str] = json.loads(Path(env_file).read_text())
    return found


class Mock:
    """mockllm.py on 127.0.0.1 (a port of its own) and its request log."""

    def __init__(self, root: Path) -> None:
        self.log = root / "requests.jsonl"
        port_file = root / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(MOCK), "--log", str(self.log), "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=(root / "mock.err").open("wb"))
        self.port = int(until("the mock's port", lambda: port_file.exists()
                              and port_file.read_text()))
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Every model call so far, its body parsed."""
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if (rec["method"] == "POST" and rec["path"].endswith(MODEL_PATHS)
                    and rec.get("body")):
                rec["json"] = json.loads(rec["body"])
                out.append(rec)
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def mock(clis: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    server = Mock(tmp_path_factory.mktemp("mock"))
    try:
        yield server
    finally:
        server.close()


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def _turns(body: dict[str, Any]) -> list[Any]:
    """The conversation of a request body, whatever the provider's shape."""
    turns = body.get("messages") or body.get("contents") or []
    return body["input"] if isinstance(body.get("input"), list) else turns


def _agents(root: Path, clis: dict[str, str], mock: Mock) -> dict[str, Any]:
    """Every CLI's agent and its 401 twin, each with a throwaway HOME (settings seeded)."""
    agents: dict[str, Any] = {}
    for cli, binary in clis.items():
        home, tmp = root / f"home-{cli}", root / f"tmp-{cli}"
        tmp.mkdir(parents=True)
        env = {"HOME": str(home), "TMPDIR": str(tmp)}
        for name, base in ((cli, mock.url), (f"{cli}-401", f"{mock.url}/401")):
            agent: dict[str, Any] = {"adaptor": cli, "command": binary, "timeout": "5m",
                                     "idle_timeout": "3m", "env": dict(env)}
            agent["env"].update(_settings(cli, home, binary, base, agent))
            agents[name] = agent
        if cli == "codex":     # one CODEX_HOME: the 401 twin overrides the provider's URL
            agents[cli]["env"].update(_settings(cli, home, binary, mock.url, agents[cli]))
            agents[f"{cli}-401"]["args"] = [
                "-c", f'model_providers.mock.base_url="{mock.url}/401/v1"']
    return agents


def _settings(cli: str, home: Path, binary: str, base: str,
              agent: dict[str, Any]) -> dict[str, str]:
    """Point `cli` at the mock (`base`): its environment, and its settings files in home."""
    if cli == "claude":
        return {"ANTHROPIC_BASE_URL": base, "ANTHROPIC_API_KEY": "sk-ant-mock"}
    if cli == "gemini":
        (home / ".gemini").mkdir(parents=True, exist_ok=True)
        (home / ".gemini" / "settings.json").write_text(json.dumps({
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False},
            "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
            "telemetry": {"enabled": False}}))
        return {"GEMINI_API_KEY": "mock-gemini-key", "GOOGLE_GEMINI_BASE_URL": base}
    if cli == "codex":
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(
            'model = "gpt-5.5"\nmodel_provider = "mock"\n\n[features]\nplugins = false\n\n'
            '[model_providers.mock]\nname = "mock"\n'
            f'base_url = "{base}/v1"\nenv_key = "MOCK_API_KEY"\nwire_api = "responses"\n'
            "request_max_retries = 1\nstream_max_retries = 1\n")
        return {"CODEX_HOME": str(codex_home), "MOCK_API_KEY": "sk-mock"}
    if cli == "opencode":
        config = {"$schema": "https://opencode.ai/config.json", "model": "mock/mock-model",
                  "provider": {"mock": {"npm": "@ai-sdk/openai-compatible", "name": "Mock",
                                        "options": {"baseURL": f"{base}/v1",
                                                    "apiKey": "sk-mock"},
                                        "models": {"mock-model": {"name": "Mock Model"}}}}}
        return {"OPENCODE_CONFIG_CONTENT": json.dumps(config),
                "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
                "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_DATA_HOME": str(home / ".local" / "share"),
                "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_STATE_HOME": str(home / ".local" / "state")}
    # aider: a model litellm knows (prices), its price list seeded (no download)
    agent["model"] = "openai/gpt-4o"
    caches = home / ".aider" / "caches"
    caches.mkdir(parents=True, exist_ok=True)
    venv = Path(binary).resolve().parent.parent
    for backup in venv.glob("lib/python3*/site-packages/litellm/"
                            "model_prices_and_context_window_backup.json"):
        (caches / "model_prices_and_context_window.json").write_bytes(backup.read_bytes())
    return {"OPENAI_API_BASE": f"{base}/v1", "OPENAI_API_KEY": "sk-mock",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


@pytest.fixture(scope="module")
def rig(clis: dict[str, str], mock: Mock,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A real batchd whose agents are the real CLIs, a repository to work on."""
    root = tmp_path_factory.mktemp("agents")
    work = root / "demo-work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=work)
    git("commit", "-q", "-m", "init", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "demo.git"))
    extra = yaml.safe_dump({"agents": _agents(root, clis, mock),
                            "repositories": {"demo": {"url": str(root / "demo.git")}}})
    rig = Rig(root, extra)
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


# -- the checks ------------------------------------------------------------------------------

def _prompt(cli: str) -> str:
    """A 100 KB prompt no quoting or trimming survives, its first line naming the CLI."""
    return f"hello {cli} -dash \"quoted\"\n" + fakekit.TRICKY_PROMPT + fakekit.big_prompt()


@pytest.mark.parametrize("cli", CLIS)
def test_a_job_completes_with_the_mocks_reply_and_the_exact_prompt(
        rig: Rig, mock: Mock, cli: str) -> None:
    """completed; the output holds MOCK-REPLY + the prompt's first 40 characters; a model
    request carries the whole 100 KB prompt exactly; usage and a session recorded."""
    prompt = _prompt(cli)
    job = rig.submit("--agent", cli, "--repo", "demo", "--prompt-file", "-",
                     stdin=prompt.encode())
    rec = rig.finished(job, timeout=600)
    output = rig.output(job).decode("utf-8", errors="replace")
    assert ("completed", None) == (rec["state"], rec["reason"]), output[-3000:]
    assert f"MOCK-REPLY: {prompt[:40]}" in output
    exact = [s for r in mock.requests() for s in _strings(r["json"]) if s == prompt]
    assert exact, "no model request carried the prompt as one exact field"
    assert rec["usage"] is not None and rec["usage"]["input_tokens"] > 0, rec
    assert rec["session_id"], rec


@pytest.mark.parametrize("cli", CLIS)
def test_a_401_fails_the_job_naming_the_error(rig: Rig, cli: str) -> None:
    """The mock answers 401: the job is failed, its reason the CLI's own error message
    (aider exits 0 all the same)."""
    rec = rig.finished(rig.submit("--agent", f"{cli}-401", "--repo", "demo", "--prompt",
                                  f"auth check for {cli}"), timeout=600)
    assert "failed" == rec["state"], rec
    assert rec["reason"].startswith("agent error: ") and AUTH_ERROR[cli] in rec["reason"], rec


@pytest.mark.parametrize("cli", CLIS)
def test_resume_sends_the_earlier_turn(rig: Rig, mock: Mock, cli: str) -> None:
    """submit --resume J: completed, resume_of J, J's workspace; the model request of the
    resumed run carries J's answer as an earlier assistant turn; usage recorded."""
    first = rig.finished(rig.submit("--agent", cli, "--repo", "demo", "--prompt",
                                    f"first turn for {cli}: say hi"), timeout=600)
    assert "completed" == first["state"], first
    second_prompt = f"resume turn for {cli}: second message é✓"
    second = rig.finished(rig.submit("--resume", first["id"], "--prompt", second_prompt),
                          timeout=600)
    assert ("completed", first["id"], first["workspace"], cli) == (
        second["state"], second["resume_of"], second["workspace"], second["agent"]), second
    earlier = f"MOCK-REPLY: first turn for {cli}: say hi"
    resumed = [r for r in mock.requests()
               if any(second_prompt in s for s in _strings(r["json"]))]
    assert resumed, "no model request of the resumed run"
    assert any(isinstance(t, dict) and t.get("role") in ("assistant", "model")
               and earlier in json.dumps(t, ensure_ascii=False)
               for r in resumed for t in _turns(r["json"])), resumed[-1]["json"]
    assert second["usage"] is not None and second["usage"]["output_tokens"], second


def test_stats_sum_the_usage_of_every_cli(rig: Rig) -> None:
    """stats: each CLI's finished jobs added their usage; the totals add them up."""
    for cli in CLIS:
        rec = rig.finished(rig.submit("--agent", cli, "--repo", "demo", "--prompt",
                                      f"count {cli}"), timeout=600)
        assert "completed" == rec["state"], rec
    stats = rig.json("stats")
    for cli in CLIS:
        assert stats["usage_by_agent"][cli]["jobs"] >= 1, stats
        assert stats["usage_by_agent"][cli]["input_tokens"] > 0, stats
    assert stats["usage"]["input_tokens"] == sum(
        s["input_tokens"] for s in stats["usage_by_agent"].values())


def test_agents_reports_the_verified_versions(rig: Rig, clis: dict[str, str]) -> None:
    """batchctl agents: each CLI found, at the version its adaptor names."""
    from adaptors import aider, claude, codex, gemini, opencode

    verified = {"claude": claude.VERIFIED, "gemini": gemini.VERIFIED, "codex": codex.VERIFIED,
                "opencode": opencode.VERIFIED, "aider": aider.VERIFIED}
    started = time.monotonic()
    by_name = {r["name"]: r for r in rig.json("agents")}
    for cli in CLIS:
        assert (True, verified[cli], clis[cli]) == (
            by_name[cli]["found"], by_name[cli]["version"], by_name[cli]["command"])
    assert time.monotonic() - started < 300
