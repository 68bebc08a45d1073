"""Tests for supervisor.config: the YAML schema, its defaults, lookup order and error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import config as _config
from supervisor.config import (
    AgentConfig,
    ApiConfig,
    CallbacksConfig,
    Config,
    ConfigError,
    FreeSpace,
    GitConfig,
    LogConfig,
    MetricsConfig,
    ReaperConfig,
    RepoConfig,
    RetentionConfig,
    SchedulerConfig,
    WorkerConfig,
    as_dict,
    default_config,
    enabled_workers,
    load,
    parse,
    parse_duration,
    parse_size,
    resolve_path,
    worker_settings,
)

SRC = "/etc/batchd/batchd.yaml"
ENV = {"BATCHD_STATE_DIR": "/srv/state", "HOME": "/home/op"}
EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "batchd.yaml"


def errors_of(text: str, source: str = SRC) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, source, env=ENV)
    return str(info.value)


def tree(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry under folder with its size and mtime (a folder's mtime shows churn)."""
    entries = [folder, *folder.rglob("*")]
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in entries)


# ----------------------------------------------------------------------------- defaults


def test_defaults_are_contract_values() -> None:
    """The built-in default carries exactly CONTRACT.md's values."""
    cfg = default_config(ENV)
    assert Path("/srv/state") == cfg.state_dir
    assert Path("/srv/state/workspaces") == cfg.workspace_dir
    assert LogConfig(level="info", format="console", file=None) == cfg.log
    assert SchedulerConfig(max_concurrent_jobs=4, heartbeat_interval=5.0, stale_after=30.0,
                           dead_after=120.0, job_timeout=86400.0, kill_grace=10.0) == cfg.scheduler
    assert ["scheduler", "locks", "reaper", "callbacks", "api"] == list(cfg.workers)
    assert ApiConfig(listen=None, tokens_file=None) == cfg.api
    assert MetricsConfig(textfile=None) == cfg.metrics
    assert ("scheduler", "locks", "reaper", "callbacks") == enabled_workers(cfg)
    assert all(WorkerConfig(startsecs=1.0, startretries=3, stopwaitsecs=10.0) == w
               for w in cfg.workers.values())
    assert {"shell": "command", "claude": "claude", "gemini": "gemini", "codex": "codex",
            "aider": "aider", "opencode": "opencode", "q": "q"} == {
        name: a.adaptor for name, a in cfg.agents.items()}
    assert {} == cfg.repositories
    assert CallbacksConfig(retry_schedule=(30.0, 120.0, 600.0), timeout=30.0,
                           secret=None, concurrency=16, batch_settle=2.0) == cfg.callbacks
    assert ReaperConfig(interval=60.0, grace=600.0) == cfg.reaper
    assert "auto" == cfg.launcher
    assert "<built-in>" == cfg.source


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "---\n"])
def test_empty_file_means_all_defaults(text: str) -> None:
    """An empty (or comment-only, or null) document is the built-in default from that file."""
    assert Config(state_dir=Path("/srv/state"), workspace_dir=Path("/srv/state/workspaces"),
                  source=SRC) == parse(text, SRC, env=ENV)


def test_default_state_dir_without_env() -> None:
    """Without $BATCHD_STATE_DIR: /var/lib/batchd as root, else ~/.local/state/batchd."""
    cfg = default_config({"HOME": "/home/op"})
    expected = (Path("/var/lib/batchd") if os.geteuid() == 0
                else Path("/home/op/.local/state/batchd"))
    assert (expected, expected / "workspaces") == (cfg.state_dir, cfg.workspace_dir)


def test_example_config_is_valid_and_shows_defaults() -> None:
    """etc/batchd.yaml parses, and each section it spells out is at its default."""
    cfg = load(str(EXAMPLE), env=ENV)
    default = default_config(ENV)
    assert (default.log, default.scheduler, default.workers, default.callbacks, default.reaper,
            default.launcher) == (cfg.log, cfg.scheduler, cfg.workers, cfg.callbacks,
                                  cfg.reaper, cfg.launcher)
    assert AgentConfig(adaptor="claude") == cfg.agents["claude"]
    assert AgentConfig(adaptor="claude", args=("--max-turns", "20"),
                       env=(("REVIEW_MODE", "strict"),), timeout=7200.0
                       ) == cfg.agents["claude-review"]
    assert {"app": RepoConfig(url="/srv/git/app.git", branch="main")} == cfg.repositories


# ----------------------------------------------------------------------------- values


FULL = """\
state_dir: /data/batchd
log: {level: DEBUG, format: json, file: /var/log/batchd.log}
scheduler:
  max_concurrent_jobs: 2
  heartbeat_interval: 500ms
  stale_after: 10s
  dead_after: 1m30s
  job_timeout: 1.5h
  kill_grace: 0
workers:
  locks: {startsecs: 2, startretries: 0, stopwaitsecs: 1m, max_restarts: 5, restart_window: 30s}
  reaper:
agents:
  claude: {command: /opt/claude, args: [--max-turns, 5, 1.5], env: {A: "", B: 3}, model: opus}
  review: {adaptor: gemini, timeout: 2h, user: jobs, idle_timeout: 10m}
repositories:
  app: {url: "git@github.com:org/app.git", branch: release/1.x, exclusive: true}
  web: {url: "https://example.com/web.git"}
  host: {url: "host:path/x.git", branch: 2025-01-01}
callbacks: {retry_schedule: [], timeout: 5, secret: 12345, concurrency: 3, batch_settle: 500ms}
reaper: {interval: 1d, grace: 0s}
launcher: Direct
"""


def test_every_key_is_read() -> None:
    """Each key of the schema lands in its dataclass field, converted."""
    cfg = parse(FULL, SRC, env=ENV)
    assert Path("/data/batchd") == cfg.state_dir
    assert Path("/data/batchd/workspaces") == cfg.workspace_dir
    assert LogConfig(level="debug", format="json", file=Path("/var/log/batchd.log")) == cfg.log
    assert SchedulerConfig(2, 0.5, 10.0, 90.0, 5400.0, 0.0) == cfg.scheduler
    assert WorkerConfig(2.0, 0, 60.0, 5, 30.0) == cfg.workers["locks"]
    assert WorkerConfig() == cfg.workers["reaper"] == cfg.workers["scheduler"]
    assert AgentConfig(adaptor="claude", command="/opt/claude", args=("--max-turns", "5", "1.5"),
                       env=(("A", ""), ("B", "3")), model="opus") == cfg.agents["claude"]
    assert AgentConfig(adaptor="gemini", timeout=7200.0, user="jobs",
                       idle_timeout=600.0) == cfg.agents["review"]
    assert AgentConfig(adaptor="command") == cfg.agents["shell"]
    assert (True, True, False) == (cfg.agents["claude"].configured,
                                   cfg.agents["review"].configured,
                                   cfg.agents["shell"].configured)
    assert {"app": RepoConfig("git@github.com:org/app.git", "release/1.x", True),
            "web": RepoConfig("https://example.com/web.git"),
            "host": RepoConfig("host:path/x.git", "2025-01-01")} == cfg.repositories
    assert CallbacksConfig(retry_schedule=(), timeout=5.0, secret="12345", concurrency=3,
                           batch_settle=0.5) == cfg.callbacks
    assert ReaperConfig(interval=86400.0, grace=0.0) == cfg.reaper
    assert "direct" == cfg.launcher


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    """Relative paths (and local repository paths) resolve against the file's folder; ~ is $HOME."""
    text = ("state_dir: state\nworkspace_dir: ~/ws\nlog: {file: ../logs/b.log}\n"
            "repositories: {a: {url: repos/a.git}, b: {url: ~/b.git}, c: {url: /abs/c}}\n")
    cfg = parse(text, str(tmp_path / "conf" / "batchd.yaml"), env=ENV)
    assert tmp_path / "conf" / "state" == cfg.state_dir
    assert Path("/home/op/ws") == cfg.workspace_dir
    assert tmp_path / "conf" / ".." / "logs" / "b.log" == cfg.log.file
    assert [str(tmp_path / "conf" / "repos" / "a.git"), "/home/op/b.git", "/abs/c"] == [
        r.url for r in cfg.repositories.values()]


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0.0), (5, 5.0), (2.5, 2.5), ("30", 30.0), ("1.5", 1.5), ("500ms", 0.5), ("30s", 30.0),
    ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5), ("1m30s", 90.0),
    ("1h2m3s", 3723.0), ("2s250ms", 2.25), (" 10s ", 10.0), ("0s", 0.0),
])
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    """Numbers are seconds; strings are number+unit parts, largest unit first."""
    assert seconds == parse_duration(value)


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
             "got 'soon'"),
    ("", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), got ''"),
    ("30x", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
            "got '30x'"),
    ("30s1m", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
              "got '30s1m'"),
    ("1m1m", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
             "got '1m1m'"),
    ("-5s", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
            "got '-5s'"),
    ("1 m", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
            "got '1 m'"),
    ("30S", "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
            "got '30S'"),
    (True, "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
           "got True"),
    (None, "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s), "
           "got None"),
    (-1, "expected a duration >= 0, got -1"),
    pytest.param(10**400, f"expected a duration >= 0, got {10**400}", id="huge-int"),
    pytest.param(-(10**400), f"expected a duration >= 0, got {-(10**400)}", id="huge-negative"),
    (float("inf"), "expected a duration >= 0, got inf"),
    (float("nan"), "expected a duration >= 0, got nan"),
    pytest.param("99999999999d", "expected a duration of at most 36500d (100 years), got "
                 "'99999999999d'", id="beyond-year-9999"),
    pytest.param(36500 * 86400 + 1, "expected a duration of at most 36500d (100 years), got "
                 f"{36500 * 86400 + 1}", id="just-over-the-cap"),
    pytest.param(1e299, "expected a duration of at most 36500d (100 years), got 1e+299",
                 id="huge-float"),
])
def test_parse_duration_refuses(value: object, message: str) -> None:
    """Anything else is a ValueError saying what a duration looks like and what was given."""
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message == str(info.value)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_combinations(h: int, m: int, s: int, ms: int) -> None:
    """Any h/m/s/ms combination adds up."""
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert expected == pytest.approx(parse_duration(f"{h}h{m}m{s}s{ms}ms"))


# ----------------------------------------------------------------------------- errors

KNOWN_SCHED = "dead_after, heartbeat_interval, job_timeout, kill_grace, max_concurrent_jobs, " \
              "stale_after"
DUR = "expected a duration (seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s)"


@pytest.mark.parametrize(("text", "message"), [
    # wrong types and bad values
    ("scheduler:\n  max_concurrent_jobs: four\n",
     f"{SRC}:2: scheduler.max_concurrent_jobs: expected a positive integer, got 'four'"),
    ("scheduler: {max_concurrent_jobs: 0}",
     f"{SRC}:1: scheduler.max_concurrent_jobs: expected a positive integer, got 0"),
    ("scheduler: {max_concurrent_jobs: -2}",
     f"{SRC}:1: scheduler.max_concurrent_jobs: expected a positive integer, got -2"),
    ("scheduler: {max_concurrent_jobs: 2.0}",
     f"{SRC}:1: scheduler.max_concurrent_jobs: expected a positive integer, got 2.0"),
    ("scheduler: {max_concurrent_jobs: yes}",
     f"{SRC}:1: scheduler.max_concurrent_jobs: expected a positive integer, got yes (a boolean)"),
    ("workers:\n  locks: {startretries: -1}\n",
     f"{SRC}:2: workers.locks.startretries: expected a non-negative integer, got -1"),
    ("scheduler: {kill_grace: soon}", f"{SRC}:1: scheduler.kill_grace: {DUR}, got 'soon'"),
    ("scheduler: {kill_grace: on}", f"{SRC}:1: scheduler.kill_grace: {DUR}, got on (a boolean)"),
    ("scheduler: {kill_grace: -1}",
     f"{SRC}:1: scheduler.kill_grace: expected a duration >= 0, got -1"),
    ("scheduler: {job_timeout: 0s}",
     f"{SRC}:1: scheduler.job_timeout: expected a duration > 0, got '0s'"),
    ("agents:\n  claude: {idle_timeout: 0}\n",
     f"{SRC}:2: agents.claude.idle_timeout: expected a duration > 0, got 0"),
    ("agents:\n  claude:\n    idle_timeout: soon\n",
     f"{SRC}:3: agents.claude.idle_timeout: {DUR}, got 'soon'"),
    ("reaper: {interval: [1]}", f"{SRC}:1: reaper.interval: {DUR}, got a list"),
    ("callbacks:\n  retry_schedule: [1s, x]\n",
     f"{SRC}:2: callbacks.retry_schedule[1]: {DUR}, got 'x'"),
    ("callbacks: {retry_schedule: 30s}",
     f"{SRC}:1: callbacks.retry_schedule: expected a list of durations, got '30s'"),
    ("callbacks:\n  concurrency: 0\n",
     f"{SRC}:2: callbacks.concurrency: expected a positive integer, got 0"),
    ("callbacks: {concurrency: many}",
     f"{SRC}:1: callbacks.concurrency: expected a positive integer, got 'many'"),
    ("callbacks:\n  timeout: 5\n  batch_settle: -1\n",
     f"{SRC}:3: callbacks.batch_settle: expected a duration >= 0, got -1"),
    ("callbacks: {secret: true}",
     f"{SRC}:1: callbacks.secret: expected a string, got true (a boolean); quote it to mean "
     "the text"),
    ("log: {level: loud}",
     f"{SRC}:1: log.level: expected one of debug, info, warning, error, got 'loud'"),
    ("log: {format: jsn}",
     f"{SRC}:1: log.format: expected one of console, json, got 'jsn'; did you mean 'json'?"),
    ("log: {file: ''}", f"{SRC}:1: log.file: expected a non-empty string, got ''"),
    ("log: {file: !!binary aGk=}",
     f"{SRC}:1: log.file: expected a string, got 'aGk=' (tagged tag:yaml.org,2002:binary)"),
    ("reaper: {grace: 2025-01-01}", f"{SRC}:1: reaper.grace: {DUR}, got 2025-01-01"),
    ("launcher: docker",
     f"{SRC}:1: launcher: expected one of auto, direct, systemd, got 'docker'"),
    ("log: 3", f"{SRC}:1: log: expected a mapping, got 3"),
    ("scheduler: [1, 2]", f"{SRC}:1: scheduler: expected a mapping, got a list"),
    ("agents:\n  x: {adaptor: clause}\n",
     f"{SRC}:2: agents.x.adaptor: expected one of claude, gemini, codex, aider, opencode, q, "
     "command, got 'clause'; did you mean 'claude'?"),
    ("agents:\n  x: {adaptor: command, args: --x}\n",
     f"{SRC}:2: agents.x.args: expected a list of strings, got '--x'"),
    ("agents:\n  x:\n    adaptor: command\n    env: {1A: x}\n",
     f"{SRC}:4: agents.x.env.1A: not an environment variable name: '1A'"),
    ("repositories:\n  r: {url: /x, exclusive: 1}\n",
     f"{SRC}:2: repositories.r.exclusive: expected true or false, got 1"),
    ("repositories:\n  r: {url: 'ftp://h/x'}\n",
     f"{SRC}:2: repositories.r.url: unsupported URL scheme 'ftp' in 'ftp://h/x' (a local path "
     "or an http, https, ssh, git or file URL)"),
    ("repositories:\n  r: {url: /x, branch: 'a..b'}\n",
     f"{SRC}:2: repositories.r.branch: not a valid git branch name: 'a..b' (git "
     "check-ref-format refuses it)"),
    # unknown keys, at every level
    ("scheduler:\n  max_jobs: 3\n",
     f"{SRC}:2: scheduler.max_jobs: unknown key 'max_jobs' (did you mean 'max_concurrent_jobs'? "
     f"known: {KNOWN_SCHED})"),
    ("stat_dir: /x",
     f"{SRC}:1: stat_dir: unknown key 'stat_dir' (did you mean 'state_dir'? known: agents, "
     "api, callbacks, disk, git, jobs, launcher, log, metrics, reaper, repositories, "
     "retention, scheduler, state_dir, workers, workspace_dir)"),
    ("workers:\n  web: {}\n",
     f"{SRC}:2: workers.web: unknown key 'web' (known: api, callbacks, locks, reaper, scheduler)"),
    ("workers:\n  locks: {retries: 1}\n",
     f"{SRC}:2: workers.locks.retries: unknown key 'retries' (did you mean 'startretries'? "
     "known: max_restarts, restart_window, startretries, startsecs, stopwaitsecs)"),
    ("agents:\n  claude: {cmd: x}\n",
     f"{SRC}:2: agents.claude.cmd: unknown key 'cmd' (did you mean 'command'? known: adaptor, "
     "args, command, env, idle_timeout, max_concurrent, model, timeout, user)"),
    ("repositories:\n  r: {url: /x, lock: true}\n",
     f"{SRC}:2: repositories.r.lock: unknown key 'lock' (known: branch, exclusive, url)"),
    # names and required keys
    ("agents:\n  'my agent': {adaptor: command}\n",
     f"{SRC}:2: agents.my agent: invalid agent name 'my agent' (1-64 letters, digits, '.', "
     "'_', '-', starting with a letter or digit)"),
    ("repositories:\n  -r: {url: /x}\n",
     f"{SRC}:2: repositories.-r: invalid repository name '-r' (1-64 letters, digits, '.', "
     "'_', '-', starting with a letter or digit)"),
    ("agents:\n  mine: [x]\n", f"{SRC}:2: agents.mine: expected a mapping, got a list"),
    ("repositories:\n  r: /x\n", f"{SRC}:2: repositories.r: expected a mapping, got '/x'"),
    ("scheduler:\n  dead_after: 100000000\n  stale_after: 100000000.5\n",
     f"{SRC}:3: scheduler.stale_after: must be less than scheduler.dead_after "
     "(100000000.5s >= 100000000s)"),
    ("agents:\n  mine: {command: x}\n",
     f"{SRC}:2: agents.mine: missing key 'adaptor' (one of claude, gemini, codex, aider, "
     "opencode, q, command)"),
    ("repositories:\n  r: {branch: main}\n",
     f"{SRC}:2: repositories.r: missing key 'url' (a local path or a git URL)"),
    # duplicate keys
    ("launcher: auto\nlog: {}\nlauncher: direct\n",
     f"{SRC}:3: launcher: duplicate key (first at line 1)"),
    ("scheduler:\n  kill_grace: 1s\n  kill_grace: 2s\n",
     f"{SRC}:3: scheduler.kill_grace: duplicate key (first at line 2)"),
    ("agents:\n  a: {adaptor: q}\n  a: {adaptor: q}\n",
     f"{SRC}:3: agents.a: duplicate key (first at line 2)"),
    # the top level and YAML itself
    ("- a\n- b\n", f"{SRC}:1: expected a mapping of keys at the top level, got a list"),
    ("just text\n", f"{SRC}:1: expected a mapping of keys at the top level, got 'just text'"),
    ("scheduler:\n  kill_grace: [1s\n", f"{SRC}:3: invalid YAML: expected ',' or ']', but got "
                                         "'<stream end>' (while parsing a flow sequence)"),
    ("log:\n\tlevel: info\n", f"{SRC}:2: invalid YAML: found character '\\t' that cannot start "
                              "any token (while scanning for the next token)"),
    ("a: 1\n---\nb: 2\n", f"{SRC}:2: invalid YAML: expected a single document in the stream, "
                          "but found another document"),
    ("log: {level: \x07}\n", f"{SRC}:1: invalid YAML: special characters are not allowed "
                             "(U+0007)"),
    ("log: *nowhere\n", f"{SRC}:1: invalid YAML: found undefined alias 'nowhere'"),
    # sanity between keys: the message names both
    ("scheduler:\n  stale_after: 3m\n",
     f"{SRC}:2: scheduler.stale_after: must be less than scheduler.dead_after (180s >= 120s)"),
    ("scheduler:\n  dead_after: 20s\n",
     f"{SRC}:2: scheduler.dead_after: must be greater than scheduler.stale_after (20s <= 30s)"),
    ("scheduler: {heartbeat_interval: 30s}",
     f"{SRC}:1: scheduler.heartbeat_interval: must be less than scheduler.stale_after "
     "(30s >= 30s)"),
])
def test_error_names_file_line_and_key(text: str, message: str) -> None:
    """Each class of mistake gives one exact file:line: key: message."""
    assert message == errors_of(text)


def test_retention_disk_and_output_cap_parse() -> None:
    """retention durations (null: forever), disk.min_free as a size or a percentage,
    jobs.output_max_bytes as a size; the defaults are the contract's."""
    default = parse("", SRC, env=ENV)
    assert (RetentionConfig(), FreeSpace(float(1 << 30)), 1 << 30) == (
        default.retention, default.disk.min_free, default.jobs.output_max_bytes)
    cfg = parse("retention: {jobs: 2d, workspaces: null, callbacks: 1h, corrupted: 0}\n"
                "disk: {min_free: 5%}\njobs: {output_max_bytes: 512KiB}\n", SRC, env=ENV)
    assert (RetentionConfig(jobs=172800.0, workspaces=None, callbacks=3600.0, corrupted=0.0),
            FreeSpace(5.0, percent=True), 512 * 1024) == (
        cfg.retention, cfg.disk.min_free, cfg.jobs.output_max_bytes)
    assert (500_000_000, "5%", "1GiB") == (
        parse("disk: {min_free: 500MB}", SRC, env=ENV).disk.min_free.bytes_of(10**12),
        str(cfg.disk.min_free), str(default.disk.min_free))
    assert 50 == cfg.disk.min_free.bytes_of(1000)


@pytest.mark.parametrize(("value", "size"), [
    (0, 0), (4096, 4096), ("1GiB", 1 << 30), ("1.5k", 1500), ("100 MB", 100_000_000),
    ("2TiB", 2 << 40), ("7b", 7)])
def test_parse_size_units(value: object, size: int) -> None:
    """Sizes: bytes, k/M/G/T in powers of 1000, KiB/MiB/GiB/TiB in powers of 1024."""
    assert size == parse_size(value)


@pytest.mark.parametrize(("text", "message"), [
    ("disk: {min_free: lots}", f"{SRC}:1: disk.min_free: expected a size (bytes, or a string "
                               "like 512KiB, 100MB, 1GiB), got 'lots'"),
    ("disk: {min_free: 120%}", f"{SRC}:1: disk.min_free: expected a percentage from 0% to "
                               "100%, got '120%'"),
    ("jobs: {output_max_bytes: 10}", f"{SRC}:1: jobs.output_max_bytes: expected a size of at "
                                     "least 1024 bytes, got 10"),
    ("jobs: {output_max_bytes: -1GiB}", f"{SRC}:1: jobs.output_max_bytes: expected a size "
                                        "(bytes, or a string like 512KiB, 100MB, 1GiB), got "
                                        "'-1GiB'"),
    ("retention: {jobs: forever}", f"{SRC}:1: retention.jobs: expected a duration (seconds, "
                                   "or a string like 500ms, 30s, 2m, 1h, 1m30s), got 'forever'"),
    ("retention: {logz: 1d}", f"{SRC}:1: retention.logz: unknown key 'logz' (known: callbacks, "
                              "corrupted, jobs, workspaces)"),
])
def test_retention_disk_and_size_errors(text: str, message: str) -> None:
    """A bad size, percentage or retention names the key and its line."""
    assert message == errors_of(text)


def test_all_errors_are_reported_in_line_order() -> None:
    """Several mistakes are all reported, one per line, sorted by line."""
    text = ("scheduler:\n  stale_after: 5m\n  max_concurrent_jobs: x\nlog: {level: x}\n"
            "scheduler: {}\n")
    assert "\n".join([
        f"{SRC}:2: scheduler.stale_after: must be less than scheduler.dead_after (300s >= 120s)",
        f"{SRC}:3: scheduler.max_concurrent_jobs: expected a positive integer, got 'x'",
        f"{SRC}:4: log.level: expected one of debug, info, warning, error, got 'x'",
        f"{SRC}:5: scheduler: duplicate key (first at line 1)",
    ]) == errors_of(text)


def test_order_check_skips_keys_that_are_already_wrong() -> None:
    """A bad value is reported once, not again as an ordering problem against its default."""
    assert f"{SRC}:1: scheduler.dead_after: {DUR}, got 'x'" == errors_of(
        "scheduler: {dead_after: x}")


def test_builtin_agent_override_keeps_its_adaptor() -> None:
    """A config entry named like a built-in agent replaces it, keeping its adaptor if unset."""
    cfg = parse("agents:\n  claude: {command: /opt/c}\n  shell:\n", SRC, env=ENV)
    assert AgentConfig(adaptor="claude", command="/opt/c") == cfg.agents["claude"]
    assert AgentConfig(adaptor="command") == cfg.agents["shell"]
    assert AgentConfig(adaptor="gemini") == cfg.agents["gemini"]


# ----------------------------------------------------------------------------- lookup


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-c PATH beats $BATCHD_CONFIG, which beats /etc/batchd/batchd.yaml, which beats built-in."""
    explicit = write(tmp_path / "a.yaml", "launcher: direct\n")
    via_env = write(tmp_path / "b.yaml", "launcher: systemd\n")
    system = tmp_path / "etc" / "batchd.yaml"
    monkeypatch.setattr(_config, "SYSTEM_CONFIG", system)
    env = {**ENV, "BATCHD_CONFIG": via_env}
    assert None is resolve_path(None, ENV)
    assert ("auto", "<built-in>") == (load(None, ENV).launcher, load(None, ENV).source)
    write(system, "launcher: direct\nlog: {level: error}\n")
    assert (str(system), "error") == (load(None, ENV).source, load(None, ENV).log.level)
    assert ("systemd", via_env) == (load(None, env).launcher, load(None, env).source)
    assert ("direct", explicit) == (load(explicit, env).launcher, load(explicit, env).source)
    assert via_env == resolve_path(None, env)
    assert explicit == resolve_path(explicit, env)


def test_empty_batchd_config_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty $BATCHD_CONFIG does not name a file."""
    monkeypatch.setattr(_config, "SYSTEM_CONFIG", tmp_path / "none.yaml")
    assert "<built-in>" == load(None, {**ENV, "BATCHD_CONFIG": ""}).source


def test_state_dir_env_is_honoured(tmp_path: Path) -> None:
    """$BATCHD_STATE_DIR is the default state_dir of a file that sets none."""
    path = write(tmp_path / "c.yaml", "log: {level: debug}\n")
    cfg = load(path, {"BATCHD_STATE_DIR": str(tmp_path / "st"), "HOME": "/h"})
    assert (tmp_path / "st", tmp_path / "st" / "workspaces") == (cfg.state_dir, cfg.workspace_dir)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """A named file that is not there is an error naming it (and saying who named it)."""
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load(missing, ENV)
    assert f"{missing}: cannot read the configuration: No such file or directory" == str(
        info.value)
    with pytest.raises(ConfigError) as info:
        load(None, {**ENV, "BATCHD_CONFIG": missing})
    assert (f"{missing}: cannot read the configuration (named by $BATCHD_CONFIG): "
            "No such file or directory") == str(info.value)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    """A folder given as the file, and bytes that are not UTF-8, are errors naming the file."""
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path), ENV)
    assert f"{tmp_path}: cannot read the configuration: Is a directory" == str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"log: {}\nlauncher: \xff\n")
    with pytest.raises(ConfigError) as info:
        load(str(bad), ENV)
    assert f"{bad}:2: not UTF-8 text (byte 18)" == str(info.value)


def test_failing_load_changes_nothing_on_disk(tmp_path: Path) -> None:
    """A bad file whose state_dir, workspace_dir and log file are inside tmp writes nothing."""
    path = write(tmp_path / "conf" / "batchd.yaml",
                 "state_dir: st\nworkspace_dir: ws\nlog: {file: l/x.log}\nlauncher: nope\n")
    before = tree(tmp_path)
    with pytest.raises(ConfigError):
        load(path, ENV)
    with pytest.raises(ConfigError):
        load(str(tmp_path / "conf" / "missing.yaml"), ENV)
    assert before == tree(tmp_path)
    assert [".", "conf", "conf/batchd.yaml"] == [name for name, _, _ in before]


# ----------------------------------------------------------------------------- plain dicts


def test_as_dict_is_json_ready() -> None:
    """as_dict gives plain JSON data: paths as strings, tuples as lists, agent env as a dict."""
    plain = as_dict(parse(FULL, SRC, env=ENV))
    assert plain == json.loads(json.dumps(plain))
    assert "/var/log/batchd.log" == plain["log"]["file"]
    assert {"A": "", "B": "3"} == plain["agents"]["claude"]["env"]
    assert [] == plain["callbacks"]["retry_schedule"]


def test_worker_settings_change_only_with_their_sections() -> None:
    """A change to callbacks changes the callbacks worker's settings, not the locks worker's."""
    old = parse("callbacks: {timeout: 5}\n", SRC, env=ENV)
    new = parse("callbacks: {timeout: 6}\nworkers: {locks: {startsecs: 3}}\n", SRC, env=ENV)
    assert worker_settings(old, "locks") == worker_settings(new, "locks")
    assert worker_settings(old, "callbacks") != worker_settings(new, "callbacks")
    assert {"state_dir", "log", "repositories"} == set(worker_settings(new, "locks"))


@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}\n #&*!'\"~.,01s")), max_size=120))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    """No input makes parse() raise anything but ConfigError (never a traceback)."""
    try:
        cfg = parse(text, SRC, env=ENV)
    except ConfigError as exc:
        assert str(exc).startswith(f"{SRC}:")
    else:
        assert SRC == cfg.source


def test_an_integer_too_long_to_convert_is_a_named_error() -> None:
    """YAML's int constructor raises on 5,000 digits: reported on its key and line, no
    traceback (and so a SIGHUP with such a file is refused, not fatal)."""
    with pytest.raises(ConfigError) as info:
        parse("scheduler:\n  max_concurrent_jobs: " + "9" * 5000 + "\n", "/etc/b.yaml")
    assert str(info.value).startswith("/etc/b.yaml:2: scheduler.max_concurrent_jobs: "
                                      "unusable value: ")


def test_yaml_nested_too_deeply_is_a_named_error() -> None:
    """3,000 nested lists exhaust the parser's recursion: a ConfigError naming the file."""
    with pytest.raises(ConfigError) as info:
        parse("agents: " + "[" * 3000 + "]" * 3000 + "\n", "/etc/b.yaml")
    assert "/etc/b.yaml: invalid YAML: nested too deeply" == str(info.value)


# ----------------------------------------------------------------------------- api, metrics


def test_api_and_metrics_keys_are_read_with_paths_resolved() -> None:
    """api.listen is kept as written, tokens_file and metrics.textfile are paths taken from
    the config file's folder; the api worker then runs."""
    cfg = parse("api: {listen: '127.0.0.1:8765', tokens_file: tok}\n"
                "metrics: {textfile: m/batchd.prom}\n", SRC, env=ENV)
    assert ApiConfig(listen="127.0.0.1:8765", tokens_file=Path("/etc/batchd/tok")) == cfg.api
    assert MetricsConfig(textfile=Path("/etc/batchd/m/batchd.prom")) == cfg.metrics
    assert ("scheduler", "locks", "reaper", "callbacks", "api") == enabled_workers(cfg)


@pytest.mark.parametrize("listen", ["127.0.0.1:8765", "[::1]:8765", "unix:/run/batchd/api.sock",
                                    "localhost:0", "0.0.0.0:80"])
def test_good_listen_addresses_are_accepted(listen: str) -> None:
    """The three forms of CONTRACT.md: HOST:PORT, [IPV6]:PORT, unix:/path."""
    assert listen == parse(f"api:\n  listen: '{listen}'\n", SRC, env=ENV).api.listen


@pytest.mark.parametrize(("listen", "why"), [
    ("8765", "expected HOST:PORT"),
    ("127.0.0.1:99999", "port must be 0-65535"),
    ("::1:8765", "IPv6 goes in brackets"),
    ("[nope]:1", "not an IPv6 address"),
    ("unix:relative.sock", "unix:/absolute/path"),
    ("host name:80", "not a host name"),
])
def test_a_bad_listen_address_is_a_config_error_naming_the_key_and_line(listen: str,
                                                                        why: str) -> None:
    """api.listen that is no address: exit-2 material naming file, line and key."""
    with pytest.raises(ConfigError) as err:
        parse(f"log: {{level: info}}\napi:\n  listen: '{listen}'\n", SRC, env=ENV)
    assert f"{SRC}:3: api.listen: " in str(err.value)
    assert why in str(err.value)


def test_unknown_api_and_metrics_keys_are_refused() -> None:
    """A typo under api or metrics is named with its line, as everywhere else."""
    with pytest.raises(ConfigError) as err:
        parse("api:\n  lisen: x\nmetrics:\n  text_file: /x\n", SRC, env=ENV)
    assert f"{SRC}:2: api.lisen: unknown key 'lisen'" in str(err.value)
    assert f"{SRC}:4: metrics.text_file: unknown key" in str(err.value)


def test_the_longest_duration_is_100_years_and_usable_from_now() -> None:
    """The cap itself is accepted, and now plus it is still an instant that can be written
    and slept on (a longer one raised "year out of range" in every door)."""
    import time
    from datetime import UTC, datetime

    assert _config.MAX_DURATION == parse_duration("36500d")
    assert datetime.fromtimestamp(time.time() + _config.MAX_DURATION, tz=UTC).year > 2100
    assert datetime.fromtimestamp(time.time() - _config.MAX_DURATION, tz=UTC).year < 1950


@pytest.mark.parametrize(("text", "message"), [
    ("scheduler: {job_timeout: 99999999999999d}\n",
     f"{SRC}:1: scheduler.job_timeout: expected a duration of at most 36500d (100 years), "
     "got '99999999999999d'"),
    ("metrics: {textfile: 5}\n", f"{SRC}:1: metrics.textfile: expected a path (a string), "
     "got 5 (a number); quote it if you mean the text"),
    ("state_dir: 1.5\n", f"{SRC}:1: state_dir: expected a path (a string), got 1.5 "
     "(a number); quote it if you mean the text"),
    ("workspace_dir: true\n", f"{SRC}:1: workspace_dir: expected a path (a string), got "
     "true (a boolean); quote it if you mean the text"),
    ("log: {file: 7}\n", f"{SRC}:1: log.file: expected a path (a string), got 7 (a number); "
     "quote it if you mean the text"),
    ("api: {tokens_file: 2025-01-01}\n", f"{SRC}:1: api.tokens_file: expected a path "
     "(a string), got 2025-01-01 (a date); quote it if you mean the text"),
    ("api: {listen: 8765}\n", f"{SRC}:1: api.listen: expected \"HOST:PORT\", "
     "\"[IPV6]:PORT\" or \"unix:/path\", got 8765 (a number); quote it if you mean the text"),
    ("agents:\n  x: {adaptor: command, command: 5}\n", f"{SRC}:2: agents.x.command: expected "
     "a command name or path (a string), got 5 (a number); quote it if you mean the text"),
    ("agents:\n  x: {adaptor: command, user: 1000}\n", f"{SRC}:2: agents.x.user: expected "
     "an account name (a string), got 1000 (a number); quote it if you mean the text"),
    ("repositories:\n  r: {url: 7}\n", f"{SRC}:2: repositories.r.url: expected a local path "
     "or a git URL, got 7 (a number); quote it if you mean the text"),
    ('agents:\n  x: {adaptor: command, args: ["a\\0b"]}\n',
     f"{SRC}:2: agents.x.args[0]: contains a NUL character (\\0) at character 1"),
    ('agents:\n  x: {adaptor: command, env: {A: "\\ud800"}}\n',
     f"{SRC}:2: agents.x.env.A: not valid UTF-8 text: '\\ud800' at character 0 is a lone "
     "surrogate"),
    ('repositories:\n  r: {url: /x, branch: "a\\udcffb"}\n',
     f"{SRC}:2: repositories.r.branch: not valid UTF-8 text: '\\udcff' at character 1 is a "
     "lone surrogate"),
])
def test_a_number_where_a_path_or_name_is_wanted_is_refused(text: str, message: str) -> None:
    """A YAML number, boolean or date is never silently read as a path, command, account or
    address (`textfile: 5` was the file ./5), and no config string may hold a NUL or a
    lone surrogate: each is one error naming the file, line and key."""
    assert message == errors_of(text)


def test_numbers_stay_text_where_text_is_meant() -> None:
    """args, env values and branches keep a number as written (`--max-turns 5`, `DEBUG: 1`,
    a branch named 1.10): no precision is lost, nothing is coerced."""
    cfg = parse("agents:\n  x: {adaptor: command, args: [--n, 5], env: {DEBUG: 1}}\n"
                "repositories:\n  r: {url: /x, branch: 1.10}\n", SRC, env=ENV)
    assert ("--n", "5") == cfg.agents["x"].args
    assert (("DEBUG", "1"),) == cfg.agents["x"].env
    assert "1.10" == cfg.repositories["r"].branch


def test_files_batchd_writes_need_an_existing_folder_when_batchd_asks(tmp_path: Path) -> None:
    """With files=True (batchd's start, reload and --check) a metrics.textfile or log.file in
    a folder that does not exist is refused naming key and line; batchctl (files=False)
    still reads the config, since it writes neither file."""
    text = (f"metrics: {{textfile: {tmp_path}/nowhere/batchd.prom}}\n"
            f"log: {{file: {tmp_path}/gone/batchd.log}}\n")
    with pytest.raises(ConfigError) as info:
        parse(text, SRC, env=ENV, files=True)
    assert (f"{SRC}:1: metrics.textfile: the folder {tmp_path}/nowhere of "
            f"{tmp_path}/nowhere/batchd.prom does not exist (or is not a folder)\n"
            f"{SRC}:2: log.file: the folder {tmp_path}/gone of {tmp_path}/gone/batchd.log "
            "does not exist (or is not a folder)") == str(info.value)
    assert tmp_path / "nowhere" / "batchd.prom" == parse(text, SRC, env=ENV).metrics.textfile
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "gone").mkdir()
    assert tmp_path / "gone" / "batchd.log" == parse(text, SRC, env=ENV, files=True).log.file


def test_paths_that_are_not_utf8_are_refused_naming_where_they_come_from(
        tmp_path: Path) -> None:
    """A config file whose path, folder or $BATCHD_STATE_DIR holds bytes that are not UTF-8
    (Python's lone surrogates) made paths no record can name: batchd crashed writing its
    pid file (UnicodeEncodeError). Each is a ConfigError naming the key or the file."""
    odd = tmp_path / "d\udcff"
    odd.mkdir()
    (odd / "c.yaml").write_text("state_dir: st\n")
    with pytest.raises(ConfigError) as info:
        load(str(odd / "c.yaml"), env={})
    assert (f"{str(odd / 'c.yaml')!r}: the configuration's path is not UTF-8 text, which batchd's "
            "records naming it must be (rename the file)") == str(info.value)
    with pytest.raises(ConfigError) as info:
        parse("state_dir: st\n", str(odd / "c.yaml"), env=ENV)
    assert str(info.value).startswith(f"{odd / 'c.yaml'}:1: state_dir: the path "
                                      f"{str(odd / 'st')!r} is not UTF-8 text")
    with pytest.raises(ConfigError) as info:
        parse("log: {level: info}\n", SRC, env={"BATCHD_STATE_DIR": "/srv/\udcff"})
    assert (f"{SRC}: state_dir: the default '/srv/\\udcff' (from $BATCHD_STATE_DIR or $HOME) "
            "is not UTF-8 text, which every record naming it must be; set state_dir"
            ) == str(info.value)
    with pytest.raises(ConfigError):
        load(None, env={"BATCHD_STATE_DIR": "/srv/\udcff"})


def test_git_section_sets_the_push_author() -> None:
    """git: {author_name, author_email}: the commits --push makes; defaults batchd,
    batchd@localhost."""
    assert ("batchd", "batchd@localhost") == (GitConfig().author_name,
                                              GitConfig().author_email)
    cfg = parse("git: {author_name: Bot, author_email: bot@example.com}\n", SRC, env=ENV)
    assert ("Bot", "bot@example.com") == (cfg.git.author_name, cfg.git.author_email)


@pytest.mark.parametrize(("text", "message"), [
    ("git: {author_name: ''}", f"{SRC}:1: git.author_name: expected a non-empty string, "
                               "got ''"),
    ('git: {author_name: "a\\nb"}', f"{SRC}:1: git.author_name: expected a name without "
                                  "'<', '>' or a line break, got 'a\\nb'"),
    ("git: {author_email: '<x>'}", f"{SRC}:1: git.author_email: expected an email address "
                                   "without '<', '>' or a line break, got '<x>'"),
    ("git: {committer: x}", f"{SRC}:1: git.committer: unknown key 'committer' (known: "
                            "author_email, author_name)"),
])
def test_git_section_errors_name_the_key(text: str, message: str) -> None:
    """A bad author names the key and its line."""
    assert message == errors_of(text)
