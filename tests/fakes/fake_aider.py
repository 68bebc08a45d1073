"""A strict fake `aider` (aider 0.86.2) in scripting mode: its options, its plain-text output as
captured from the real CLI, its exit 0 after an API error.

Like the real one: only the options of fixtures/aider/help.txt (else its usage and "aider:
error: unrecognized arguments: --x", exit 2); the prompt is `--message TEXT` or the file
`--message-file F` (relative: from the folder; missing: "F: file not found error", then the
interactive prompt, which ends at stdin's end: exit 0); without `--model` and without an
API key it starts the OpenRouter login and waits (FAKE_OAUTH_WAIT seconds, default 300);
with `--model openai/...` but no OPENAI_API_KEY it prints the captured authentication
error and exits 0; `--yes-always` without `--no-gitignore` adds `.aider*` to the
workspace's .gitignore; the chat is appended to `.aider.chat.history.md` (or
`--chat-history-file`), and `--restore-chat-history` reads it back (the record's
`restored`). Scenarios: success, auth401 (the captured 401: exit 0 all the same).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from _fakecommon import (
    Missing,
    Unknown,
    argparse_options,
    fail,
    finish,
    help_text,
    parse,
    record,
    replay,
    scenario,
    stdin_kind,
)

CLI = "aider"
HELP = help_text(CLI, "help.txt")
USAGE = HELP.split("\n\n", 1)[0] + "\n"

if sys.argv[1:] == ["--version"]:
    print("aider 0.86.2")
    sys.exit(0)
try:
    opts, files, _ = parse(sys.argv[1:], argparse_options(HELP))
except Unknown as exc:
    fail(f"{USAGE}aider: error: unrecognized arguments: {exc}\n", 2)
except Missing as exc:
    fail(f"{USAGE}aider: error: argument {exc}: expected one argument\n", 2)


def last(name: str) -> str | None:
    values = opts.get(name) or [None]
    return values[-1]


kind = stdin_kind()
model = last("--model")
keys = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY")
if model is None and not any(os.environ.get(k) for k in keys):
    record(None, kind)
    replay(CLI, "nomodel")
    time.sleep(float(os.environ.get("FAKE_OAUTH_WAIT") or 300))
    finish(0)

message = last("--message")
prompt: bytes | None = message.encode() if message is not None else None
source = last("--message-file")
if prompt is None and source is not None:
    path = Path(source)
    try:
        prompt = path.read_bytes()
    except OSError:
        record(None, kind)
        print("Aider v0.86.2")
        print(f"{source}: file not found error\n\n> ", end="", flush=True)
        sys.stdin.read()
        finish(0)
record(prompt, kind)
if prompt is None:
    fail("fake aider: only --message / --message-file runs are faked\n", 2)

if "--yes-always" in opts and "--no-gitignore" not in opts and Path(".git").exists():
    with open(".gitignore", "a", encoding="utf-8") as f:
        f.write(".aider*\n")
history = Path(last("--chat-history-file") or ".aider.chat.history.md")
run = scenario()
if model is not None and model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
    run = "nokey"
restored = None
if "--restore-chat-history" in opts and history.exists():
    restored = history.read_text(encoding="utf-8")
    if run == "success":
        run = "resume"
if restored is not None and os.environ.get("FAKE_RECORD"):
    with open(os.environ["FAKE_RECORD"], encoding="utf-8") as f:
        data = json.load(f)
    data["restored"] = restored
    with open(os.environ["FAKE_RECORD"], "w", encoding="utf-8") as f:
        json.dump(data, f)
replay(CLI, run)
if run in ("success", "resume"):
    with open(history, "a", encoding="utf-8") as f:
        f.write(f"\n#### {prompt.decode('utf-8', errors='replace')}\n\nMOCK-REPLY\n")
finish(0)
