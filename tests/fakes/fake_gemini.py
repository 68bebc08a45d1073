"""A strict fake `gemini` (Gemini CLI 0.61.0) in headless mode: its options, its refusals, its
stream-json output as captured from the real CLI.

Like the real one: only the options of fixtures/gemini/help.txt (else "Unknown argument: x"
and the usage, exit 1); in a folder not trusted (no `--skip-trust`, no
GEMINI_CLI_TRUST_WORKSPACE=true) it exits 55 with the captured message; no GEMINI_API_KEY:
exit 41; the prompt is stdin (not a terminal), `-p TEXT` appended after a blank line, empty:
exit 42; `--resume ID` needs a session this fake made in the SAME folder ("latest": the
newest of this folder), else exit 42. Scenarios: success, auth401 (an error result; exit
145, the HTTP status & 0xFF).
"""

from __future__ import annotations

import os
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

CLI = "gemini"
CAPTURED = {"success": "6ceefffa-7c1f-4b82-99b7-21989bd7792b",
            "resume": "6ceefffa-7c1f-4b82-99b7-21989bd7792b",
            "auth401": "dd3d3e1d-7ea3-416e-98f2-b861fb949b0d"}
USAGE = help_text(CLI, "help.txt")

if sys.argv[1:] in (["--version"], ["-v"]):
    print("0.61.0")
    sys.exit(0)
try:
    opts, positionals, _ = parse(sys.argv[1:], yargs_options(USAGE))
except Unknown as exc:
    fail(f"Unknown argument: {str(exc).lstrip('-')}\n{USAGE}", 1)
except Missing as exc:
    fail(f"Not enough arguments following: {str(exc).lstrip('-')}\n{USAGE}", 1)
fmt = (opts.get("--output-format") or opts.get("-o") or ["text"])[-1]
if fmt not in ("text", "json", "stream-json"):
    fail(f'Invalid values:\n  Argument: output-format, Given: "{fmt}", Choices: "text", '
         f'"json", "stream-json"\n{USAGE}', 1)
if fmt != "stream-json":
    fail("fake gemini: only --output-format stream-json is faked\n", 1)
if "--skip-trust" not in opts and os.environ.get("GEMINI_CLI_TRUST_WORKSPACE") != "true":
    replay(CLI, "untrusted")
    finish(55)
if not os.environ.get("GEMINI_API_KEY"):
    replay(CLI, "nokey")
    finish(41)

kind = stdin_kind()
prompt = read_stdin() if kind not in ("tty", "closed") else b""
extra = (opts.get("--prompt") or opts.get("-p") or [None])[-1]
if extra is not None:
    prompt = prompt + b"\n\n" + extra.encode() if prompt else extra.encode()
record(prompt, kind)
if not prompt:
    fail("No input provided via stdin. Input can be provided by piping data into gemini or "
         "using the --prompt option.\n", 42)

resume = (opts.get("--resume") or opts.get("-r") or [None])[-1]
run = scenario()
if resume is not None:
    here = [sid for sid, s in sessions(CLI).items() if s.get("cwd") == os.getcwd()]
    if not here:
        fail("Error resuming session: No previous sessions found for this project.\n", 42)
    if resume == "latest":
        resume = here[-1]
    if resume not in here:
        fail(f'Error resuming session: Invalid session identifier "{resume}". Use '
             '--list-sessions to see available sessions.\n', 42)
    session = resume
    if run == "success":
        run = "resume"
else:
    session = new_session_id()
replay(CLI, run, {CAPTURED[run]: session})
if run in ("success", "resume"):
    save_session(CLI, session, prompt)
    finish(0)
finish(145)
