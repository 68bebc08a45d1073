"""A strict fake `claude` (Claude Code 2.1.332) in print mode: its options, its refusals, its
stream-json output as captured from the real CLI.

Like the real one: only the options of fixtures/claude/help.txt (else "error: unknown option
'--x'", exit 1); `--output-format stream-json` needs `--verbose`; as root,
`--dangerously-skip-permissions` is refused unless IS_SANDBOX is exactly "1" (2.1.332 checks
`process.env.IS_SANDBOX === "1"`; exit 1); the prompt is
the positional argument or stdin, waited for 3 s when stdin is a pipe; no credentials
(ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, CLAUDE_CODE_OAUTH_TOKEN) is the captured "Not
logged in" run; `--resume ID` needs a session this fake made (else "No conversation found
with session ID: ID"). Scenarios: success, auth401 (the API answered 401: exit 1 after an
`is_error` result whose subtype still says "success").
"""

from __future__ import annotations

import os
import select
import sys

from _fakecommon import (
    Missing,
    Unknown,
    commander_options,
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
)

CLI = "claude"
CAPTURED = {"success": "f6ed0bbd-a2b6-472c-8d38-ff4bca11b1c2",
            "resume": "f6ed0bbd-a2b6-472c-8d38-ff4bca11b1c2",
            "auth401": "fd40f8ea-f263-4726-9a31-e8151173d58a",
            "nokey": "1a33f87d-1d9c-4d93-8bdd-f2f94135a7a9"}
FORMATS = ("text", "json", "stream-json")

if sys.argv[1:] in (["--version"], ["-v"]):
    print("2.1.332 (Claude Code)")
    sys.exit(0)
try:
    opts, positionals, _ = parse(sys.argv[1:], commander_options(help_text(CLI, "help.txt")))
except Unknown as exc:
    fail(f"error: unknown option '{exc}'\n", 1)
except Missing as exc:
    fail(f"error: option '{exc}' argument missing\n", 1)
if "-p" not in opts and "--print" not in opts:
    fail("fake claude: only print mode (-p) is faked\n", 1)
fmt = (opts.get("--output-format") or ["text"])[-1]
if fmt not in FORMATS:
    fail(f"error: option '--output-format <format>' argument '{fmt}' is invalid. Allowed "
         "choices are text, json, stream-json.\n", 1)
if fmt != "stream-json":
    fail("fake claude: only --output-format stream-json is faked\n", 1)
if "--verbose" not in opts:
    fail("Error: When using --print, --output-format=stream-json requires --verbose\n", 1)
if ("--dangerously-skip-permissions" in opts and os.geteuid() == 0
        and os.environ.get("IS_SANDBOX") != "1"):
    replay(CLI, "root_refusal")
    finish(1)

kind = stdin_kind()
if positionals:
    prompt = " ".join(positionals).encode()
elif kind == "pipe" and not select.select([0], [], [], 3.0)[0]:
    sys.stderr.write("Warning: no stdin data received in 3s, proceeding without it. If "
                     "piping from a slow command, redirect stdin explicitly: < /dev/null "
                     "to skip, or wait longer.\n")
    prompt = b""
else:
    prompt = read_stdin()
record(prompt, kind)
if not prompt:
    fail("Error: Input must be provided either through stdin or as a prompt argument when "
         "using --print\n", 1)

resume = (opts.get("--resume") or opts.get("-r") or [None])[-1]
keyed = any(os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN",
                                        "CLAUDE_CODE_OAUTH_TOKEN"))
run = scenario() if keyed else "nokey"
if resume is not None:
    if resume not in sessions(CLI):
        fail(f"No conversation found with session ID: {resume}\n", 1)
    session = resume
    if run == "success":
        run = "resume"
else:
    session = new_session_id()
replay(CLI, run, {CAPTURED[run]: session})
if run in ("success", "resume"):
    save_session(CLI, session, prompt)
    finish(0)
finish(1)
