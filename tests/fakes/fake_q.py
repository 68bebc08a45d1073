"""A strict fake `q chat` (Amazon Q Developer CLI 1.19.x) and `kiro-cli chat`: plain text.

q could not be installed, so nothing here replays a capture: the options are those of
`ChatArgs` in the q source (fixtures/q/help-chat.txt, reconstructed in clap's layout), and
the behaviour that of its source: an unknown option is clap's "error: unexpected argument
'--x' found" (exit 2); with `--no-interactive` and a non-terminal stdin the prompt is INPUT
followed by all of stdin, trimmed (`buffer.trim()`); empty: "error: Input must be supplied
when running in non-interactive mode" (exit 1); `--resume` continues this folder's
conversation. Scenarios: success (a plain-text answer), nologin ("error: You are not logged
in, please log in with q login", exit 1).
"""

from __future__ import annotations

import os
import sys

from _fakecommon import (
    Missing,
    Opt,
    Unknown,
    clap_options,
    fail,
    finish,
    hang,
    help_text,
    parse,
    read_stdin,
    record,
    save_session,
    scenario,
    sessions,
    stdin_kind,
)

CLI = "q"
NAME = os.environ.get("FAKE_PROG") or "q"   # the wrapper names itself (q, kiro-cli)
USAGE = f"Usage: {NAME} chat [OPTIONS] [INPUT]\n"

if sys.argv[1:] in (["--version"], ["-V"]):
    print(f"{NAME} 1.19.7")
    sys.exit(0)
if sys.argv[1:2] != ["chat"]:
    fail(f"fake {NAME}: only `chat` is faked\n", 2)
table = clap_options(help_text(CLI, "help-chat.txt"))
table.update({"--profile": Opt(value=True), "--non-interactive": Opt()})
try:
    opts, inputs, _ = parse(sys.argv[2:], table)
except Unknown as exc:
    fail(f"error: unexpected argument '{exc}' found\n\n  tip: to pass '{exc}' as a value, "
         f"use '-- {exc}'\n\n{USAGE}\nFor more information, try '--help'.\n", 2)
except Missing as exc:
    fail(f"error: a value is required for '{exc}' but none was supplied\n", 2)
if "--no-interactive" not in opts and "--non-interactive" not in opts:
    fail(f"fake {NAME}: only --no-interactive is faked\n", 2)

kind = stdin_kind()
text = " ".join(inputs).encode()
if kind not in ("tty", "closed"):
    text += read_stdin()
prompt = text.strip()
record(prompt, kind)
if scenario() == "nologin":
    fail(f"error: You are not logged in, please log in with {NAME} login\n", 1)
if not prompt:
    fail("error: Input must be supplied when running in non-interactive mode\n", 1)
here = f"dir:{os.getcwd()}"
earlier = sessions(CLI).get(here, {}).get("turns", []) if ("--resume" in opts
                                                            or "-r" in opts) else []
sys.stderr.write("Using tool: execute_bash\n")
sys.stderr.flush()
sys.stdout.write(f"> Resuming a conversation of {len(earlier)} turns.\n" if earlier else "> ")
sys.stdout.flush()
hang()
sys.stdout.write(f"Read {len(prompt)} bytes of prompt.\n")
save_session(CLI, here, prompt)
finish(0)
