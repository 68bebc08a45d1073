"""A strict fake `opencode run` (opencode 1.18.33): its options, its message quoting, its JSON
events as captured from the real CLI.

Like the real one: `opencode run` takes only the options of fixtures/opencode/help-run.txt
(else its usage on stderr, exit 1); message arguments are joined with each one holding a
space wrapped in double quotes, inner quotes escaped (what the real CLI sends the model),
then a piped stdin is appended after a newline; no message and empty stdin: "Error: You
must provide a message or a command", exit 1; `--session ID` needs a session this fake made
(else "Error: Session not found", exit 1). Scenarios: success, auth401 (an `error` event,
exit 1).
"""

from __future__ import annotations

import sys

from _fakecommon import (
    Missing,
    Unknown,
    fail,
    finish,
    help_text,
    new_session_id,
    parse,
    read_stdin,
    record,
    replay,
    save_session,
    scenario,
    sessions,
    stdin_kind,
    yargs_options,
)

CLI = "opencode"
CAPTURED = {"success": "ses_dc4972782ffe381uH0MrzEu2aF",
            "resume": "ses_dc4972782ffe381uH0MrzEu2aF",
            "auth401": "ses_dc496d6e0ffemM9j8SUSelY2hL"}
USAGE = help_text(CLI, "help-run.txt")
RED_ERROR = "\x1b[91m\x1b[1mError: \x1b[0m"

if sys.argv[1:] in (["--version"], ["-v"]):
    print("1.18.33")
    sys.exit(0)
if sys.argv[1:2] != ["run"]:
    fail("fake opencode: only `opencode run` is faked\n", 1)
try:
    opts, messages, _ = parse(sys.argv[2:], yargs_options(USAGE))
except (Unknown, Missing):
    fail(USAGE, 1)
if (opts.get("--format") or ["default"])[-1] not in ("default", "json"):
    fail(USAGE, 1)
if (opts.get("--format") or ["default"])[-1] != "json":
    fail("fake opencode: only --format json is faked\n", 1)


def quoted(message: str) -> str:
    return '"' + message.replace('"', '\\"') + '"' if " " in message else message


kind = stdin_kind()
prompt = " ".join(quoted(m) for m in messages).encode()
if kind not in ("tty", "closed"):
    piped = read_stdin()
    if piped:
        prompt = prompt + b"\n" + piped if prompt else piped
record(prompt, kind)
if not prompt:
    fail(f"{RED_ERROR}You must provide a message or a command\n", 1)

resume = (opts.get("--session") or opts.get("-s") or [None])[-1]
run = scenario()
if resume is not None:
    if resume not in sessions(CLI):
        fail(f"{RED_ERROR}Session not found\n", 1)
    session = resume
    if run == "success":
        run = "resume"
else:
    session = new_session_id("ses")
replay(CLI, run, {CAPTURED[run]: session})
if run in ("success", "resume"):
    save_session(CLI, session, prompt)
    finish(0)
finish(1)
