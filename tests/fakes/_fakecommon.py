"""What the strict fake agent CLIs share: their real help texts as option tables, strict argv
parsing, the prompt as the real CLI reads it, a record of the call, captured output replayed.

A fake never connects anywhere. It accepts exactly the options of its real CLI's `--help`
(tests/fakes/fixtures/<cli>/help*.txt, captured from the versions the adaptors were verified
against), answers anything else as the real CLI does (its message, its exit code), reads the
prompt where the real CLI reads it (stdin, a file), and replays output captured from the
real CLI (fixtures/<cli>/<scenario>.stdout/.stderr), a fresh session id put in place of the
captured one.

Environment knobs (through the job spec's `env`):
  FAKE_RECORD    path: write {"argv", "cwd", "env", "prompt_b64", "stdin"} there as JSON:
                 the argv without the program, the prompt exactly as the model would get it
                 (base64), and what stdin was ("file", "pipe", "tty", "null", "closed")
  FAKE_SCENARIO  which captured run to replay (default "success"; e.g. "auth401", "nokey")
  FAKE_HANG      seconds to sleep after the first line of output (timeouts, cancels, idle)
  FAKE_HOME      where the fake keeps its sessions (default $HOME), as the real CLIs keep
                 theirs under the user's home
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import stat
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# -- option tables from help texts ---------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """One option: does it take a value (always, optionally, or repeated values)?"""

    value: bool = False
    optional: bool = False
    array: bool = False


def commander_options(text: str) -> dict[str, Opt]:
    """Options of a commander.js help (claude): `  -p, --print`, `  --model <model>`,
    `  -r, --resume [value]`, up to the `Commands:` section."""
    table: dict[str, Opt] = {}
    body = text.split("\nCommands:", 1)[0]
    pattern = re.compile(r"^  (-[^\s,]+(?:, -[^\s,]+)*)(?: ([<\[])[^>\]]*[>\]])?(?=\s|$)")
    for line in body.splitlines():
        m = pattern.match(line)
        if m:
            opt = Opt(value=m.group(2) is not None, optional=m.group(2) == "[")
            for name in m.group(1).split(", "):
                table[name] = opt
    return table


def yargs_options(text: str) -> dict[str, Opt]:
    """Options of a yargs help (gemini, opencode): `  -m, --model  Model  [string]`, the
    type tag possibly on a continuation line."""
    table: dict[str, Opt] = {}
    names: list[str] = []
    kinds: list[str] = []

    def close() -> None:
        kind = kinds[0] if kinds else "boolean"
        opt = Opt(value=kind != "boolean", array=kind == "array")
        for name in names:
            table[name] = opt

    head = re.compile(r"^\s{2,6}((?:-\w, )?--[\w-]+)\s")
    for line in text.splitlines():
        m = head.match(line + " ")
        if m:
            if names:
                close()
            names = m.group(1).split(", ")
            kinds = []
        if names:
            kinds += re.findall(r"\[(boolean|string|array|number|count)\]", line)
    if names:
        close()
    return table


def clap_options(text: str) -> dict[str, Opt]:
    """Options of a clap help (codex, q): `  -c, --config <key=value>`, `      --json`."""
    table: dict[str, Opt] = {}
    pattern = re.compile(r"^\s{2,6}((?:-\w, )?--[\w-]+)(\.\.\.)?(?: <[^>]+>(\.\.\.)?)?(?=\s|$)")
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            opt = Opt(value="<" in line[m.start(1):m.end()], array=m.group(3) is not None)
            for name in m.group(1).split(", "):
                table[name] = opt
    return table


def argparse_options(text: str) -> dict[str, Opt]:
    """Options of an argparse help (aider): `  --model MODEL`, `  --verify-ssl,
    --no-verify-ssl`, `  --list-models MODEL, --models MODEL`, after `options:`."""
    table: dict[str, Opt] = {}
    body = text.split("\noptions:", 1)[-1]
    for line in body.splitlines():
        if not re.match(r"^  -", line):
            continue
        spec = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        for part in spec.split(", "):
            words = part.split()
            if words and words[0].startswith("-"):
                table[words[0]] = Opt(value=len(words) > 1)
    return table


class Unknown(Exception):
    """An option the real CLI does not have (str(): the option as given)."""


class Missing(Exception):
    """An option given without its value (str(): the option)."""


def parse(argv: list[str], table: dict[str, Opt], *,
          stop_at: Iterable[str] = ()) -> tuple[dict[str, list[str | None]], list[str], int]:
    """(options -> values, positionals, index where parsing stopped): strict GNU-style
    parsing against `table`; `--name=value` accepted; parsing stops at `--` or at the first
    positional named in `stop_at` (a subcommand). Unknown / Missing on bad input."""
    stops = set(stop_at)
    opts: dict[str, list[str | None]] = {}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positionals += argv[i + 1:]
            return opts, positionals, len(argv)
        if arg.startswith("-") and arg != "-":
            name, eq, inline = arg.partition("=")
            opt = table.get(name)
            if opt is None:
                raise Unknown(name)
            values = opts.setdefault(name, [])
            if eq:
                if not opt.value:
                    raise Unknown(arg)
                values.append(inline)
            elif opt.value and not opt.optional:
                if i + 1 >= len(argv):
                    raise Missing(name)
                values.append(argv[i + 1])
                i += 1
                while opt.array and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    values.append(argv[i + 1])
                    i += 1
            elif opt.optional and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values.append(argv[i + 1])
                i += 1
            else:
                values.append(None)
        elif arg in stops and not positionals:
            return opts, positionals, i
        else:
            positionals.append(arg)
        i += 1
    return opts, positionals, len(argv)


def help_text(cli: str, name: str) -> str:
    return (FIXTURES / cli / name).read_text(encoding="utf-8")


# -- the prompt, as the real CLI reads it --------------------------------------------------

def stdin_kind() -> str:
    """What fd 0 is: file (a regular file), pipe, tty, null (/dev/null) or closed."""
    try:
        st = os.fstat(0)
    except OSError:
        return "closed"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return "pipe"
    if os.isatty(0):
        return "tty"
    if stat.S_ISCHR(st.st_mode):
        return "null"
    return "other"


def read_stdin() -> bytes:
    """All of stdin (empty when there is none)."""
    if stdin_kind() in ("closed", "tty"):
        return b""
    return sys.stdin.buffer.read()


def record(prompt: bytes | None, kind: str) -> None:
    """Write the FAKE_RECORD file: how the fake was called and the prompt it took."""
    path = os.environ.get("FAKE_RECORD")
    if not path:
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ),
                   "prompt_b64": None if prompt is None else base64.b64encode(prompt).decode(),
                   "stdin": kind}, f)


# -- sessions --------------------------------------------------------------------------------

def _sessions_file(cli: str) -> Path:
    home = os.environ.get("FAKE_HOME") or os.environ.get("HOME") or "/nonexistent"
    return Path(home) / f".fake-{cli}-sessions.json"


def sessions(cli: str) -> dict[str, Any]:
    """The sessions this fake made: {session id: {"cwd": ..., "turns": [prompt, ...]}}."""
    try:
        data = json.loads(_sessions_file(cli).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_session(cli: str, session: str, prompt: bytes) -> None:
    """Remember a turn of `session` (made in the current folder). Several fakes of one CLI
    may end at once (jobs run side by side): the read-modify-write holds a lock file and
    writes through a temp file of its own, so none loses another's turn or finds its temp
    file taken (chaos seed 648818462: a fake died so, and its job failed `exit 1`)."""
    path = _sessions_file(cli)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = sessions(cli)
        entry = data.setdefault(session, {"cwd": os.getcwd(), "turns": []})
        entry["turns"].append(prompt.decode("utf-8", errors="replace"))
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)


def new_session_id(style: str = "uuid") -> str:
    """A fresh id shaped like the real CLI's: a UUID, or opencode's `ses_...`."""
    if style == "ses":
        return "ses_" + uuid.uuid4().hex[:26]
    return str(uuid.uuid4())


# -- output ----------------------------------------------------------------------------------

def scenario() -> str:
    return os.environ.get("FAKE_SCENARIO") or "success"


def fixture(cli: str, name: str) -> str | None:
    path = FIXTURES / cli / name
    return path.read_text(encoding="utf-8") if path.exists() else None


def replay(cli: str, name: str, subs: dict[str, str] | None = None) -> None:
    """Print fixtures/<cli>/<name>.stderr then .stdout (line by line, flushed; FAKE_HANG
    seconds of silence after the first stdout line), with `subs` replaced."""
    err = fixture(cli, f"{name}.stderr")
    if err:
        sys.stderr.write(_sub(err, subs))
        sys.stderr.flush()
    out = fixture(cli, f"{name}.stdout") or ""
    for n, line in enumerate(_sub(out, subs).splitlines(keepends=True)):
        sys.stdout.write(line)
        sys.stdout.flush()
        if n == 0:
            hang()


def _sub(text: str, subs: dict[str, str] | None) -> str:
    for old, new in (subs or {}).items():
        text = text.replace(old, new)
    return text


def hang() -> None:
    seconds = float(os.environ.get("FAKE_HANG") or 0)
    if seconds:
        time.sleep(seconds)


def fail(message: str, code: int) -> None:
    """The real CLI's message on stderr, then its exit code."""
    sys.stderr.write(message)
    sys.stderr.flush()
    sys.exit(code)


def finish(code: int = 0) -> None:
    sys.stdout.flush()
    sys.exit(code)


def captured_session(text: str, pattern: str) -> str:
    """The session id a captured output carries (the first match of `pattern`)."""
    m = re.search(pattern, text)
    assert m is not None, pattern
    return m.group(1)
