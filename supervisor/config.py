"""batchd's configuration: the YAML schema of CONTRACT.md, its defaults and its validation.

`load()` finds the file (`-c PATH`, then $BATCHD_CONFIG, then /etc/batchd/batchd.yaml if it
exists, then the built-in default) and `parse()` checks it. Parsing walks PyYAML's node tree
(`compose()`), so every problem names the file, the line and the dotted key:

    /etc/batchd/batchd.yaml:12: scheduler.max_concurrent_jobs: expected a positive integer,
    got 'four'    (on one line)

Every problem of a file is reported at once, one per line of the ConfigError's message.
Unknown keys (with a did-you-mean), duplicate keys, wrong types, bad values, booleans where
numbers belong, bad durations and YAML syntax errors are all refused.

Paths (state_dir, workspace_dir, log.file, local repository URLs) expand `~` and are
taken relative to the folder of the config file when relative.

Crash safety: this module writes nothing. It reads one file and builds frozen dataclasses;
a failing load leaves the disk exactly as it was.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                  # PyYAML is imported by the parser alone (see _yaml)
    from yaml.nodes import Node

__all__ = [
    "ADAPTORS",
    "ADAPTOR_COMMANDS",
    "DIRECTORY_SESSIONS",
    "DURATION_HELP",
    "LAUNCHERS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_DURATION",
    "NAME_PATTERN",
    "OPTIONAL_WORKERS",
    "SIZE_HELP",
    "SYSTEM_CONFIG",
    "WORKER_NAMES",
    "WORKER_SECTIONS",
    "AgentConfig",
    "ApiConfig",
    "CallbacksConfig",
    "Config",
    "ConfigError",
    "DiskConfig",
    "FreeSpace",
    "GitConfig",
    "JobsConfig",
    "LogConfig",
    "MetricsConfig",
    "ReaperConfig",
    "RepoConfig",
    "RetentionConfig",
    "SchedulerConfig",
    "WorkerConfig",
    "as_dict",
    "check_branch",
    "check_repo_url",
    "default_config",
    "default_state_dir",
    "enabled_workers",
    "load",
    "parse",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "resolve_path",
    "size_text",
    "worker_settings",
]

ADAPTORS = ("claude", "gemini", "codex", "aider", "opencode", "q", "command")

#: The binaries an agent without `command` runs, per adaptor, tried in order on the agent's
#: PATH (the `q` adaptor takes `kiro-cli`, Amazon Q Developer CLI's successor, when there
#: is no `q`). Shared by the adaptors, `batchctl agents` and `batchd --check`.
ADAPTOR_COMMANDS: dict[str, tuple[str, ...]] = {
    "claude": ("claude",), "gemini": ("gemini",), "codex": ("codex",), "aider": ("aider",),
    "opencode": ("opencode",), "q": ("q", "kiro-cli"), "command": ("/bin/sh",),
}

#: Adaptors whose CLI keeps its session in the workspace and resumes "the conversation of
#: this folder" (aider's chat history file, q/kiro-cli's per-directory conversation): a job
#: of theirs can be resumed (`submit --resume`) without a session id.
DIRECTORY_SESSIONS: frozenset[str] = frozenset({"aider", "q"})
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
LAUNCHERS = ("auto", "direct", "systemd")

#: The system-wide config file, used when neither -c nor $BATCHD_CONFIG names one.
SYSTEM_CONFIG = Path("/etc/batchd/batchd.yaml")

#: Agent and repository names (the same rule as job ids).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

DURATION_HELP = "seconds, or a string like 500ms, 30s, 2m, 1h, 1m30s"

#: The workers batchd forks, in startup order (DESIGN.md: scheduler -> locks -> reaper,
#: callbacks -> api); `workers:` takes one section per name.
WORKER_NAMES: tuple[str, ...] = ("scheduler", "locks", "reaper", "callbacks", "api")
#: Workers that run only when configured (see enabled_workers).
OPTIONAL_WORKERS: frozenset[str] = frozenset({"api"})


class ConfigError(Exception):
    """A configuration problem; str() names the file, line and key (one problem per line)."""


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$BATCHD_STATE_DIR, else /var/lib/batchd as root, else ~/.local/state/batchd."""
    e = os.environ if env is None else env
    if e.get("BATCHD_STATE_DIR"):
        return Path(e["BATCHD_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/batchd")
    return Path(e.get("HOME", os.path.expanduser("~"))) / ".local" / "state" / "batchd"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"          # debug | info | warning | error
    format: str = "console"      # console | json
    file: Path | None = None     # None: stderr


@dataclass(frozen=True)
class SchedulerConfig:
    max_concurrent_jobs: int = 4
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    dead_after: float = 120.0
    job_timeout: float = 86400.0
    kill_grace: float = 10.0


@dataclass(frozen=True)
class WorkerConfig:
    startsecs: float = 1.0
    startretries: int = 3
    stopwaitsecs: float = 10.0
    # OTP-style restart intensity: more than max_restarts crashes within
    # restart_window seconds escalates (FATAL; batchd exits if the worker is critical).
    max_restarts: int = 30
    restart_window: float = 60.0


@dataclass(frozen=True)
class AgentConfig:
    adaptor: str
    command: str | None = None           # the CLI binary; None: the adaptor's default name
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None         # None: scheduler.job_timeout
    user: str | None = None
    model: str | None = None
    idle_timeout: float | None = None    # no output for this long: timed_out, reason idle
    max_concurrent: int | None = None    # jobs of this agent running at once; None: no cap
    #: True when the configuration file names this agent (not only the built-in default);
    #: `batchd --check` warns about those whose binary is missing. Not part of equality.
    configured: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class RepoConfig:
    url: str
    branch: str | None = None            # None: the remote's default branch
    exclusive: bool = False


@dataclass(frozen=True)
class CallbacksConfig:
    retry_schedule: tuple[float, ...] = (30.0, 120.0, 600.0)
    timeout: float = 30.0
    secret: str | None = None
    concurrency: int = 16                # deliveries in flight at once (at most 4 per host)
    batch_settle: float = 2.0            # a batch's event waits this long after its last job


@dataclass(frozen=True)
class ReaperConfig:
    interval: float = 60.0
    grace: float = 600.0


@dataclass(frozen=True)
class ApiConfig:
    listen: str | None = None            # "127.0.0.1:8765", "[::1]:8765", "unix:/path"; None: off
    tokens_file: Path | None = None      # None: <state_dir>/api/tokens


@dataclass(frozen=True)
class MetricsConfig:
    textfile: Path | None = None         # Prometheus text format, rewritten atomically
_GIB = 1 << 30


@dataclass(frozen=True)
class JobsConfig:
    output_max_bytes: int = _GIB        # a job's output beyond this is cut (head kept)


@dataclass(frozen=True)
class GitConfig:
    """The identity of the commits `submit --push` makes (CONTRACT.md, "Results")."""

    author_name: str = "batchd"
    author_email: str = "batchd@localhost"


@dataclass(frozen=True)
class RetentionConfig:
    """How long after a job's end the reaper keeps each thing (None: forever)."""

    jobs: float | None = 30 * 86400.0        # record, folder, output (then the archive)
    workspaces: float | None = 7 * 86400.0   # a terminal job's workspace
    callbacks: float | None = 7 * 86400.0    # delivered and failed webhook records
    corrupted: float | None = 30 * 86400.0   # quarantined *.corrupted.* files


@dataclass(frozen=True)
class FreeSpace:
    """A free-space floor: `amount` bytes, or `amount` percent of the filesystem."""

    amount: float = float(_GIB)
    percent: bool = False

    def bytes_of(self, total: int) -> int:
        """The floor in bytes on a filesystem of `total` bytes."""
        return int(total * self.amount / 100.0) if self.percent else int(self.amount)

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else size_text(int(self.amount))


@dataclass(frozen=True)
class DiskConfig:
    min_free: FreeSpace = field(default_factory=FreeSpace)


def _default_workers() -> dict[str, WorkerConfig]:
    return {name: WorkerConfig() for name in WORKER_NAMES}


def _default_agents() -> dict[str, AgentConfig]:
    agents = {"shell": AgentConfig(adaptor="command")}
    for name in ("claude", "gemini", "codex", "aider", "opencode", "q"):
        agents[name] = AgentConfig(adaptor=name)
    return agents


@dataclass(frozen=True)
class Config:
    state_dir: Path
    workspace_dir: Path
    log: LogConfig = field(default_factory=LogConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    workers: dict[str, WorkerConfig] = field(default_factory=_default_workers)
    agents: dict[str, AgentConfig] = field(default_factory=_default_agents)
    repositories: dict[str, RepoConfig] = field(default_factory=dict)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    reaper: ReaperConfig = field(default_factory=ReaperConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    git: GitConfig = field(default_factory=GitConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    launcher: str = "auto"               # auto | direct | systemd
    source: str = "<built-in>"           # the file this came from


def enabled_workers(cfg: Config) -> tuple[str, ...]:
    """The workers this configuration runs, in startup order: every worker but an optional
    one that is not configured (the api runs only when `api.listen` is set)."""
    return tuple(n for n in WORKER_NAMES if n not in OPTIONAL_WORKERS
                 or (n == "api" and cfg.api.listen is not None))


# --------------------------------------------------------------------------- lookup


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """The built-in configuration: every default, state under default_state_dir(env)."""
    state_dir = _default_state_dir(os.environ if env is None else env, "<built-in>")
    return Config(state_dir=state_dir, workspace_dir=state_dir / "workspaces")


def resolve_path(path: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The config file load() reads: path, $BATCHD_CONFIG, SYSTEM_CONFIG if it exists, or None."""
    e = os.environ if env is None else env
    if path is not None:
        return path
    if e.get("BATCHD_CONFIG"):
        return e["BATCHD_CONFIG"]
    if SYSTEM_CONFIG.exists():
        return str(SYSTEM_CONFIG)
    return None


def load(path: str | None = None, env: Mapping[str, str] | None = None, *,
         files: bool = False) -> Config:
    """Read and check the configuration found by resolve_path(); ConfigError if it is bad.

    An explicitly named file (path or $BATCHD_CONFIG) that cannot be read is an error naming
    it; with no file at all the built-in default is returned. `files`: also refuse a file
    batchd writes (log.file, metrics.textfile) whose folder does not exist (batchd's own
    start, reload and --check; batchctl writes neither, so it does not ask).
    """
    e = os.environ if env is None else env
    chosen = resolve_path(path, e)
    if chosen is None:
        return default_config(e)
    if not _is_utf8(chosen):
        raise ConfigError(f"{chosen!r}: the configuration's path is not UTF-8 text, which "
                          "batchd's records naming it must be (rename the file)")
    via = " (named by $BATCHD_CONFIG)" if path is None and chosen == e.get("BATCHD_CONFIG") else ""
    try:
        with open(chosen, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read the configuration{via}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{chosen}:{line}: not UTF-8 text (byte {exc.start})") from None
    return parse(text, chosen, env=e, files=files)


def parse(text: str, source: str, *, env: Mapping[str, str] | None = None,
          files: bool = False) -> Config:
    """Check YAML text (from file `source`) and build its Config; ConfigError if it is bad.

    An empty document means all defaults. Relative paths are taken from source's folder.
    """
    import yaml  # only a parse needs it: importing config stays cheap

    e = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem, context = exc.problem or "", exc.context or ""
        if problem.startswith("but "):      # "expected X, but found Y"
            problem, context = f"{context}, {problem}", ""
        what = f"{problem} ({context})" if context else problem
        raise ConfigError(f"{source}{line}: invalid YAML: {what}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        lineno = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"{source}:{lineno}: invalid YAML: {exc.reason} (U+{char:04X})"
                          ) from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    base = Path(os.path.abspath(os.path.dirname(source) or "."))
    ctx = _Ctx(source=source, base=base, home=e.get("HOME"), files=files)
    values: dict[str, Any] = {}
    if root is not None:
        if _kind(root) in ("mapping", "null"):
            values = _section(ctx, root, "", _TOP)
        else:
            ctx.error(root, "", f"expected a mapping of keys at the top level, got {_got(root)}")
    _check_order(ctx, values.get("scheduler", SchedulerConfig()))
    if ctx.errors:
        raise ConfigError(ctx.message())
    state_dir = values.pop("state_dir", None) or _default_state_dir(e, source)
    workspace_dir = values.pop("workspace_dir", None) or state_dir / "workspaces"
    return Config(state_dir=state_dir, workspace_dir=workspace_dir, source=source, **values)


def _default_state_dir(env: Mapping[str, str], source: str) -> Path:
    """default_state_dir, or ConfigError when it is not UTF-8 ($BATCHD_STATE_DIR or $HOME
    from bytes that are not): every job record names paths under it."""
    state_dir = default_state_dir(env)
    if not _is_utf8(str(state_dir)):
        raise ConfigError(f"{source}: state_dir: the default {str(state_dir)!r} (from "
                          "$BATCHD_STATE_DIR or $HOME) is not UTF-8 text, which every record "
                          "naming it must be; set state_dir")
    return state_dir


# --------------------------------------------------------------------------- durations

#: The longest duration anything takes (100 years): beyond it, an instant computed from
#: now cannot be written (ISO-8601 stops at year 9999) nor slept on (time_t, 2^63 ns).
MAX_DURATION = 36500 * 86400.0
MAX_DURATION_TEXT = "36500d (100 years)"

_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = tuple(_UNITS)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")


def _seconds(value: object) -> float:
    """Seconds of a duration; ValueError(what was expected) if it is not one."""
    expected = f"expected a duration ({DURATION_HELP})"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e300 else math.inf   # no OverflowError
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            seconds, pos, last = 0.0, 0, -1
            while pos < len(text):
                m = _PART.match(text, pos)
                if m is None or _UNIT_ORDER.index(m.group(2)) <= last:
                    raise ValueError(expected)
                last = _UNIT_ORDER.index(m.group(2))
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if not text:
                raise ValueError(expected)
    else:
        raise ValueError(expected)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a duration >= 0")
    if seconds > MAX_DURATION:
        raise ValueError(f"expected a duration of at most {MAX_DURATION_TEXT}")
    return seconds


def parse_duration(value: object) -> float:
    """Seconds of a duration: a number >= 0, or `500ms`, `30s`, `2m`, `1h`, `1d`, `1m30s`, `1.5s`.

    Units (d, h, m, s, ms) combine largest first, each at most once; a numeric string is
    seconds. Raises ValueError naming what was given.
    """
    try:
        return _seconds(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, got {value!r}") from None


# --------------------------------------------------------------------------- sizes

SIZE_HELP = "bytes, or a string like 512KiB, 100MB, 1GiB"
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10,
                               "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
                               "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
                               "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_size(value: object) -> int:
    """Bytes of a size: an integer >= 0, or `512KiB`, `100MB`, `1GiB`, `1.5G` (k/M/G/T
    are powers of 1000, KiB/MiB/GiB/TiB of 1024). ValueError naming what was given."""
    expected = f"expected a size ({SIZE_HELP}), got {value!r}"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(expected)
        return value
    if not isinstance(value, str):
        raise ValueError(expected)
    m = _SIZE.fullmatch(value.strip())
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise ValueError(expected)
    return int(float(m.group(1)) * unit)


def size_text(n: int) -> str:
    """`n` bytes as people read it: 1GiB, 512MiB, 1500B."""
    for suffix, unit in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= unit:
            return f"{n / unit:.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{n}B"


# --------------------------------------------------------------------------- plain dicts

#: The sections each worker process reads: when one of them changes on reload, that worker
#: must be restarted to see it. (Its own process settings, cfg.workers[name], are the
#: parent's business and need no restart.) A worker that starts reading another section
#: adds it here.
WORKER_SECTIONS: dict[str, tuple[str, ...]] = {
    "scheduler": ("state_dir", "workspace_dir", "log", "scheduler", "agents", "repositories",
                  "launcher", "jobs", "git", "disk"),
    "locks": ("state_dir", "log", "repositories"),
    "reaper": ("state_dir", "workspace_dir", "log", "reaper", "retention", "scheduler",
               "repositories", "metrics"),
    "callbacks": ("state_dir", "log", "callbacks"),
    "api": ("state_dir", "workspace_dir", "log", "scheduler", "agents", "repositories",
            "workers", "api", "metrics", "disk"),
}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def as_dict(cfg: Config) -> dict[str, Any]:
    """The config as JSON-ready plain data (paths as strings, tuples as lists, agent env a dict)."""
    out: dict[str, Any] = _plain(cfg)
    for agent in out["agents"].values():
        agent["env"] = dict(agent["env"])
    return out


def worker_settings(cfg: Config, name: str) -> dict[str, Any]:
    """What worker `name` reads of the config (WORKER_SECTIONS): compare old and new on reload."""
    plain = as_dict(cfg)
    return {key: plain[key] for key in WORKER_SECTIONS[name]}


# --------------------------------------------------------------------------- the node walker


class _Invalid(Exception):
    """A value node that does not fit its key; the message says what was expected."""


@dataclass
class _Ctx:
    source: str
    base: Path                  # relative paths are taken from here
    home: str | None            # for ~ expansion
    files: bool = False         # check that the folders of files batchd writes exist
    errors: list[tuple[int, str]] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)    # dotted key -> its value node
    bad: set[str] = field(default_factory=set)               # dotted keys that had errors

    def error(self, node: Node, key: str, message: str) -> None:
        line = node.start_mark.line + 1
        where = f"{self.source}:{line}"
        self.errors.append((line, f"{where}: {key}: {message}" if key else f"{where}: {message}"))
        self.bad.add(key)

    def message(self) -> str:
        """Every error, in line order (stable: the walk's order within a line)."""
        return "\n".join(text for _, text in sorted(self.errors, key=lambda e: e[0]))


_Conv = Callable[[_Ctx, "Node", str], Any]

_TAGS = {
    "tag:yaml.org,2002:int": "int",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "bool",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:str": "str",
    "tag:yaml.org,2002:timestamp": "timestamp",     # 2025-01-01: text where text is wanted
}


def _kind(node: Node) -> str:
    node_id = getattr(node, "id", None)    # MappingNode.id, SequenceNode.id, ScalarNode.id
    if node_id == "mapping":
        return "mapping"
    if node_id == "sequence":
        return "list"
    return _TAGS.get(node.tag, "other")


def _value(node: Node) -> Any:
    """The Python value of a scalar node (str, int, float, bool or None)."""
    if _kind(node) == "str":
        return node.value
    from yaml.constructor import SafeConstructor

    return SafeConstructor().construct_object(node)


def _got(node: Node) -> str:
    kind = _kind(node)
    if kind in ("mapping", "list"):
        return f"a {kind}"
    if kind == "null":
        return "null"
    if kind == "bool":
        return f"{node.value} (a boolean)"
    if kind in ("int", "float", "timestamp"):
        return str(node.value)
    if kind == "other":
        return f"{node.value!r} (tagged {node.tag})"
    return repr(node.value)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def _pairs(ctx: _Ctx, node: Node, key: str) -> list[tuple[str, Node, Node]]:
    """A mapping's (name, key node, value node); null is empty; duplicates are reported."""
    if _kind(node) == "null":
        return []
    if _kind(node) != "mapping":
        ctx.error(node, key, f"expected a mapping, got {_got(node)}")
        return []
    seen: dict[str, int] = {}
    out: list[tuple[str, Node, Node]] = []
    for knode, vnode in node.value:
        if getattr(knode, "id", None) != "scalar":
            ctx.error(knode, key, f"expected a plain key, got {_got(knode)}")
            continue
        name = str(knode.value)
        if name in seen:
            ctx.error(knode, _join(key, name), f"duplicate key (first at line {seen[name]})")
            continue
        seen[name] = knode.start_mark.line + 1
        out.append((name, knode, vnode))
    return out


def _section(ctx: _Ctx, node: Node, key: str, schema: Mapping[str, _Conv]) -> dict[str, Any]:
    """Convert each key of a mapping with its schema entry; unknown keys are reported."""
    values: dict[str, Any] = {}
    for name, knode, vnode in _pairs(ctx, node, key):
        path = _join(key, name)
        conv = schema.get(name)
        if conv is None:
            known = ", ".join(sorted(schema))
            ctx.error(knode, path, f"unknown key '{name}' ({_suggest(name, schema)}known: {known})")
            continue
        ctx.nodes[path] = vnode
        try:
            values[name] = conv(ctx, vnode, path)
        except _Invalid as exc:
            ctx.error(vnode, path, str(exc))
        except (ValueError, OverflowError, RecursionError) as exc:   # YAML's own constructors
            ctx.error(vnode, path, f"unusable value: {str(exc)[:120]}")
    return values


def _dataclass(cls: Callable[..., Any], schema: Mapping[str, _Conv]) -> _Conv:
    def conv(ctx: _Ctx, node: Node, key: str) -> Any:
        return cls(**_section(ctx, node, key, schema))
    return conv


def _int(minimum: int, what: str) -> _Conv:
    def conv(ctx: _Ctx, node: Node, key: str) -> int:
        if _kind(node) == "int":
            value: int = _value(node)
            if value >= minimum:
                return value
        raise _Invalid(f"expected {what}, got {_got(node)}")
    return conv


def _duration(*, positive: bool = False, nullable: bool = False) -> _Conv:
    def conv(ctx: _Ctx, node: Node, key: str) -> float | None:
        kind = _kind(node)
        if nullable and kind == "null":
            return None
        try:
            if kind not in ("int", "float", "str"):
                raise ValueError(f"expected a duration ({DURATION_HELP})")
            seconds = _seconds(_value(node))
        except ValueError as exc:
            raise _Invalid(f"{exc}, got {_got(node)}") from None
        if positive and seconds <= 0:
            raise _Invalid(f"expected a duration > 0, got {_got(node)}")
        return seconds
    return conv


def _clean_text(text: str) -> str:
    """`text` if every process can carry it (argv, environment, a path, a JSON record):
    no NUL (a YAML "\\0" escape) and no lone surrogate (a YAML "\\ud800" escape)."""
    if "\0" in text:
        raise _Invalid(f"contains a NUL character (\\0) at character {text.index(chr(0))}")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise _Invalid(f"not valid UTF-8 text: {text[exc.start]!r} at character "
                           f"{exc.start} is a lone surrogate") from None
    return text


def _string(ctx: _Ctx, node: Node, key: str) -> str:
    """A non-empty string; numbers are taken as written (args: [--max-turns, 5])."""
    kind = _kind(node)
    if kind in ("str", "int", "float", "timestamp") and node.value != "":
        return _clean_text(str(node.value))
    if kind == "bool":
        raise _Invalid(f"expected a string, got {_got(node)}; quote it to mean the text")
    if kind == "str":
        raise _Invalid("expected a non-empty string, got ''")
    raise _Invalid(f"expected a string, got {_got(node)}")


def _text(what: str) -> _Conv:
    """A non-empty string written as one: a path, command, account or address given as a
    number, boolean or date (`textfile: 5`, `user: 1000`) is refused, not read as the
    text "5": quoting it says the text is meant."""
    def conv(ctx: _Ctx, node: Node, key: str) -> str:
        kind = _kind(node)
        if kind in ("int", "float", "bool", "timestamp"):
            kinds = {"int": "a number", "float": "a number", "bool": "a boolean",
                     "timestamp": "a date"}
            raise _Invalid(f"expected {what}, got {node.value} ({kinds[kind]}); quote it "
                           "if you mean the text")
        return _string(ctx, node, key)
    return conv


def _optional(conv: _Conv) -> _Conv:
    def optional(ctx: _Ctx, node: Node, key: str) -> Any:
        return None if _kind(node) == "null" else conv(ctx, node, key)
    return optional


def _bool(ctx: _Ctx, node: Node, key: str) -> bool:
    if _kind(node) == "bool":
        value: bool = _value(node)
        return value
    raise _Invalid(f"expected true or false, got {_got(node)}")


def _choice(choices: tuple[str, ...]) -> _Conv:
    def conv(ctx: _Ctx, node: Node, key: str) -> str:
        if _kind(node) == "str" and node.value.lower() in choices:
            return str(node.value.lower())
        hint = _suggest(str(node.value), choices) if _kind(node) == "str" else ""
        raise _Invalid(f"expected one of {', '.join(choices)}, got {_got(node)}"
                       + (f"; {hint.strip()}" if hint else ""))
    return conv


def _expand(ctx: _Ctx, text: str) -> Path:
    """~ expanded ($HOME of env), relative paths taken from the config file's folder."""
    if text == "~" or text.startswith("~/"):
        text = (ctx.home or os.path.expanduser("~")) + text[1:]
    elif text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded == text:
            raise _Invalid(f"unknown user in path {text!r}")
        text = expanded
    path = Path(text)
    path = path if path.is_absolute() else ctx.base / path
    if not _is_utf8(str(path)):
        raise _Invalid(f"the path {str(path)!r} is not UTF-8 text, which every record naming "
                       "it must be (a relative path is taken from the configuration's folder)")
    return path


def _is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8: a path from bytes that are not UTF-8 (a file name,
    $HOME) holds lone surrogates, and no JSON record can name it."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _path(ctx: _Ctx, node: Node, key: str) -> Path:
    return _expand(ctx, _text("a path (a string)")(ctx, node, key))


def _file(ctx: _Ctx, node: Node, key: str) -> Path:
    """A path to a file batchd writes: with ctx.files its folder must exist (batchd does
    not make it, and finding out at the first write, in a worker's log, is too late)."""
    path = _path(ctx, node, key)
    if ctx.files and not path.parent.is_dir():
        raise _Invalid(f"the folder {path.parent} of {path} does not exist (or is not a folder)")
    return path


_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?[^@/:]+:.*")
_URL_SCHEMES = ("http", "https", "ssh", "git", "file")


def _repo_url(ctx: _Ctx, node: Node, key: str) -> str:
    """A git URL (http/https/ssh/git/file, or scp-like [user@]host:path) or a local path."""
    return _repo_url_text(ctx, _text("a local path or a git URL")(ctx, node, key))


def check_repo_url(text: str, base: Path, home: str | None = None) -> str:
    """The config's rule for a repository URL, for other doors (`batchctl repo add`).

    Returns the URL as stored (a local path made absolute from `base`, ~ expanded with
    `home`); ValueError saying what is wrong otherwise.
    """
    if not text.strip():
        raise ValueError("expected a non-empty URL or path")
    try:
        _clean_text(text)
    except _Invalid as exc:
        raise ValueError(f"URL {exc}") from None
    try:
        return _repo_url_text(_Ctx(source="", base=base, home=home), text)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None


def _repo_url_text(ctx: _Ctx, text: str) -> str:
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme.lower() not in _URL_SCHEMES:
            raise _Invalid(f"unsupported URL scheme '{scheme}' in {text!r} "
                           "(a local path or an http, https, ssh, git or file URL)")
        if not rest:
            raise _Invalid(f"incomplete URL {text!r}")
        return text
    if _SCP_LIKE.fullmatch(text) and not text.startswith(("/", ".", "~")):
        return text
    return str(_expand(ctx, text))


#: What git refuses in a branch name (`git check-ref-format --branch`): control characters,
#: space, ~ ^ : ? * [ \\, "..", "@{", a leading "-", an empty component (leading, trailing or
#: double "/"), a component that starts with "." or ends with ".lock", a final ".".
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|^-|^/|/$|//|(?:^|/)\.|\.lock(?:/|$)|\.$")


def _branch(ctx: _Ctx, node: Node, key: str) -> str:
    try:
        return check_branch(_string(ctx, node, key))
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def check_branch(text: str) -> str:
    """`text` if git takes it as a branch name (`git check-ref-format --branch`, whose rules
    _BAD_REF spells out; "HEAD" is refused too) and it is printable text (no control
    character, no lone surrogate from a non-UTF-8 argument), else ValueError saying so."""
    if not text or text == "HEAD" or _BAD_REF.search(text) or not text.isprintable():
        raise ValueError(f"not a valid git branch name: {text!r} (git check-ref-format "
                         "refuses it)")
    return text


def _durations(ctx: _Ctx, node: Node, key: str) -> tuple[float, ...]:
    if _kind(node) != "list":
        raise _Invalid(f"expected a list of durations, got {_got(node)}")
    out: list[float] = []
    item = _duration()
    for i, child in enumerate(node.value):
        try:
            out.append(item(ctx, child, f"{key}[{i}]"))
        except _Invalid as exc:
            ctx.error(child, f"{key}[{i}]", str(exc))
    return tuple(out)


def _strings(ctx: _Ctx, node: Node, key: str) -> tuple[str, ...]:
    if _kind(node) == "null":
        return ()
    if _kind(node) != "list":
        raise _Invalid(f"expected a list of strings, got {_got(node)}")
    out: list[str] = []
    for i, child in enumerate(node.value):
        try:
            out.append(_string(ctx, child, f"{key}[{i}]"))
        except _Invalid as exc:
            ctx.error(child, f"{key}[{i}]", str(exc))
    return tuple(out)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env(ctx: _Ctx, node: Node, key: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name, knode, vnode in _pairs(ctx, node, key):
        path = _join(key, name)
        if not _ENV_NAME.fullmatch(name):
            ctx.error(knode, path, f"not an environment variable name: {name!r}")
            continue
        try:   # an empty string is a fine value for a variable
            out.append((name, _clean_text(vnode.value) if _kind(vnode) == "str"
                        else _string(ctx, vnode, path)))
        except _Invalid as exc:
            ctx.error(vnode, path, str(exc))
    return tuple(out)


def _valid_name(ctx: _Ctx, knode: Node, path: str, what: str, name: str) -> bool:
    if NAME_PATTERN.fullmatch(name):
        return True
    ctx.error(knode, path, f"invalid {what} name {name!r} (1-64 letters, digits, '.', '_', '-', "
                           "starting with a letter or digit)")
    return False


_AGENT: dict[str, _Conv] = {
    "adaptor": _choice(ADAPTORS),
    "command": _optional(_text("a command name or path (a string)")),
    "args": _strings,
    "env": _env,
    "timeout": _duration(positive=True, nullable=True),
    "user": _optional(_text("an account name (a string)")),
    "model": _optional(_string),
    "idle_timeout": _duration(positive=True, nullable=True),
    "max_concurrent": _optional(_int(1, "a positive integer or null")),
}


def _agents(ctx: _Ctx, node: Node, key: str) -> dict[str, AgentConfig]:
    """The built-in agents, each overridden by a config entry of its name, plus new ones."""
    builtin = _default_agents()
    agents = dict(builtin)
    for name, knode, vnode in _pairs(ctx, node, key):
        path = _join(key, name)
        if not _valid_name(ctx, knode, path, "agent", name):
            continue
        values = _section(ctx, vnode, path, _AGENT)
        if "adaptor" not in values:
            if name not in builtin:
                if not ctx.bad & {path, f"{path}.adaptor"}:
                    ctx.error(knode, path, f"missing key 'adaptor' (one of {', '.join(ADAPTORS)})")
                continue
            values["adaptor"] = builtin[name].adaptor
        agents[name] = AgentConfig(**values, configured=True)
    return agents


_REPO: dict[str, _Conv] = {
    "url": _repo_url,
    "branch": _optional(_branch),
    "exclusive": _bool,
}


def _repositories(ctx: _Ctx, node: Node, key: str) -> dict[str, RepoConfig]:
    repos: dict[str, RepoConfig] = {}
    for name, knode, vnode in _pairs(ctx, node, key):
        path = _join(key, name)
        if not _valid_name(ctx, knode, path, "repository", name):
            continue
        values = _section(ctx, vnode, path, _REPO)
        if "url" not in values:
            if not ctx.bad & {path, f"{path}.url"}:
                ctx.error(knode, path, "missing key 'url' (a local path or a git URL)")
            continue
        repos[name] = RepoConfig(**values)
    return repos


def parse_listen(text: str) -> tuple[str, str | int]:
    """An `api.listen` address: ("tcp", host, port) as ("host", port), or ("unix", path).

    Accepted: "HOST:PORT" (an IPv4 address or a name), "[IPV6]:PORT", "unix:/abs/path".
    Returns (host, port) for TCP and ("unix", path) for a socket; ValueError naming the
    problem otherwise. Port 0 means "any free port" (tests)."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {text!r}")
        if "\0" in path or len(path.encode()) > 107:
            raise ValueError(f"unix socket path too long or invalid: {path!r}")
        return "unix", path
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, [IPV6]:PORT or unix:/path, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        import ipaddress

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"not an IPv6 address: {host[1:-1]!r}") from None
        host = host[1:-1]
    elif ":" in host or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError(f"not a host name or IPv4 address: {host!r} (IPv6 goes in brackets)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port_text!r}")
    return host, int(port_text)


def _listen(ctx: _Ctx, node: Node, key: str) -> str:
    text: str = _text('"HOST:PORT", "[IPV6]:PORT" or "unix:/path"')(ctx, node, key)
    try:
        parse_listen(text)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return text


_WORKER: dict[str, _Conv] = {
    "startsecs": _duration(),
    "startretries": _int(0, "a non-negative integer"),
    "stopwaitsecs": _duration(),
    "max_restarts": _int(0, "a non-negative integer"),
    "restart_window": _duration(positive=True),
}


def _workers(ctx: _Ctx, node: Node, key: str) -> dict[str, WorkerConfig]:
    """The workers' process settings; a worker left out keeps the defaults."""
    workers = _default_workers()
    schema = {name: _dataclass(WorkerConfig, _WORKER) for name in workers}
    workers.update(_section(ctx, node, key, schema))
    return workers


_LOG: dict[str, _Conv] = {
    "level": _choice(LOG_LEVELS),
    "format": _choice(LOG_FORMATS),
    "file": _optional(_file),
}

_SCHEDULER: dict[str, _Conv] = {
    "max_concurrent_jobs": _int(1, "a positive integer"),
    "heartbeat_interval": _duration(positive=True),
    "stale_after": _duration(positive=True),
    "dead_after": _duration(positive=True),
    "job_timeout": _duration(positive=True),
    "kill_grace": _duration(),
}

_CALLBACKS: dict[str, _Conv] = {
    "retry_schedule": _durations,
    "timeout": _duration(positive=True),
    "secret": _optional(_string),
    "concurrency": _int(1, "a positive integer"),
    "batch_settle": _duration(),
}

_REAPER: dict[str, _Conv] = {
    "interval": _duration(positive=True),
    "grace": _duration(),
}

_API: dict[str, _Conv] = {
    "listen": _optional(_listen),
    "tokens_file": _optional(_path),
}

_METRICS: dict[str, _Conv] = {
    "textfile": _optional(_file),
}


def _size(minimum: int) -> _Conv:
    def conv(ctx: _Ctx, node: Node, key: str) -> int:
        if _kind(node) not in ("int", "str"):
            raise _Invalid(f"expected a size ({SIZE_HELP}), got {_got(node)}")
        try:
            n = parse_size(_value(node))
        except ValueError:
            raise _Invalid(f"expected a size ({SIZE_HELP}), got {_got(node)}") from None
        if n < minimum:
            raise _Invalid(f"expected a size of at least {minimum} bytes, got {_got(node)}")
        return n
    return conv


def _free_space(ctx: _Ctx, node: Node, key: str) -> FreeSpace:
    """A size, or a percentage of the filesystem ("5%", 0..100)."""
    if _kind(node) == "str" and str(node.value).strip().endswith("%"):
        text = str(node.value).strip()[:-1].strip()
        try:
            pct = float(text)
        except ValueError:
            pct = -1.0
        if not 0.0 <= pct <= 100.0:
            raise _Invalid(f"expected a percentage from 0% to 100%, got {_got(node)}")
        return FreeSpace(pct, percent=True)
    return FreeSpace(float(_size(0)(ctx, node, key)))


_JOBS: dict[str, _Conv] = {
    "output_max_bytes": _size(1024),
}

def _identity(what: str) -> _Conv:
    """A commit author's name or email: a non-empty string git can write in a commit header
    (no newline, no '<' or '>', not only spaces)."""
    def conv(ctx: _Ctx, node: Node, key: str) -> str:
        text = _string(ctx, node, key)
        if not text.strip() or any(c in text for c in "<>\n\r\0"):
            raise _Invalid(f"expected {what} without '<', '>' or a line break, got {_got(node)}")
        return text
    return conv


_GIT: dict[str, _Conv] = {
    "author_name": _identity("a name"),
    "author_email": _identity("an email address"),
}

_RETENTION: dict[str, _Conv] = {
    "jobs": _duration(nullable=True),
    "workspaces": _duration(nullable=True),
    "callbacks": _duration(nullable=True),
    "corrupted": _duration(nullable=True),
}

_DISK: dict[str, _Conv] = {
    "min_free": _free_space,
}

_TOP: dict[str, _Conv] = {
    "state_dir": _optional(_path),
    "workspace_dir": _optional(_path),
    "log": _dataclass(LogConfig, _LOG),
    "scheduler": _dataclass(SchedulerConfig, _SCHEDULER),
    "workers": _workers,
    "agents": _agents,
    "repositories": _repositories,
    "callbacks": _dataclass(CallbacksConfig, _CALLBACKS),
    "reaper": _dataclass(ReaperConfig, _REAPER),
    "api": _dataclass(ApiConfig, _API),
    "metrics": _dataclass(MetricsConfig, _METRICS),
    "jobs": _dataclass(JobsConfig, _JOBS),
    "git": _dataclass(GitConfig, _GIT),
    "retention": _dataclass(RetentionConfig, _RETENTION),
    "disk": _dataclass(DiskConfig, _DISK),
    "launcher": _choice(LAUNCHERS),
}

#: (smaller, larger): each pair must be strictly increasing.
_ORDERED = (("heartbeat_interval", "stale_after"), ("stale_after", "dead_after"))


def _check_order(ctx: _Ctx, sched: SchedulerConfig) -> None:
    """heartbeat_interval < stale_after < dead_after; the error names both keys."""
    for low, high in _ORDERED:
        lo_key, hi_key = f"scheduler.{low}", f"scheduler.{high}"
        if ctx.bad & {lo_key, hi_key}:
            continue
        lo, hi = getattr(sched, low), getattr(sched, high)
        if lo < hi:
            continue
        if lo_key in ctx.nodes:
            ctx.error(ctx.nodes[lo_key], lo_key,
                      f"must be less than {hi_key} ({_secs(lo)} >= {_secs(hi)})")
        else:
            ctx.error(ctx.nodes[hi_key], hi_key,
                      f"must be greater than {lo_key} ({_secs(hi)} <= {_secs(lo)})")


def _secs(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds}s"
