"""A strict fake `codex exec` (Codex CLI 0.171.0): its options, its stdin rules, its JSONL
events as captured from the real CLI.

Like the real one: `codex exec` takes only the options of fixtures/codex/help-exec.txt and
`codex exec ... resume` only those of help-exec-resume.txt after `resume` (else clap's
"error: unexpected argument '--x' found", exit 2); the prompt is stdin for `-` or no PROMPT
(empty: "No prompt provided via stdin.", exit 1), and an argv PROMPT with a piped stdin
waits for its end and appends it as a `<stdin>` block; `resume ID` needs a thread this fake
made (threads are global, any folder), else exit 1. `turn.completed.usage` is cumulative
for the thread (11 input / 7 output tokens per turn, as the captured runs). Scenarios:
success, auth401 and offline (a `turn.failed`, exit 1).
"""

from __future__ import annotations

import json
import sys

from _fakecommon import (
    Missing,
    Unknown,
    clap_options,
    fail,
    finish,
    fixture,
    hang,
    help_text,
    new_session_id,
    parse,
    read_stdin,
    record,
    save_session,
    scenario,
    sessions,
    stdin_kind,
)

CLI = "codex"
CAPTURED = {"success": "01a23b68-a498-7b92-87ac-54b53fa00dc8",
            "resume": "01a23b68-a498-7b92-87ac-54b53fa00dc8",
            "auth401": "01a23b68-b358-74c0-98b5-f3b443096ce2",
            "offline": "01a23b68-b8ae-7332-be62-526e6ed97c98"}
USAGE = {"exec": "Usage: codex exec [OPTIONS] [PROMPT]\n       codex exec [OPTIONS] <COMMAND> "
                 "[ARGS]\n",
         "resume": "Usage: codex exec resume [OPTIONS] [SESSION_ID] [PROMPT]\n"}


def clap_error(arg: str, where: str) -> None:
    fail(f"error: unexpected argument '{arg}' found\n\n  tip: to pass '{arg}' as a value, use "
         f"'-- {arg}'\n\n{USAGE[where]}\nFor more information, try '--help'.\n", 2)


def options(args: list[str], where: str, table_file: str,
            stop: tuple[str, ...] = ()) -> tuple[dict[str, list[str | None]], list[str], int]:
    try:
        return parse(args, clap_options(help_text(CLI, table_file)), stop_at=stop)
    except Unknown as exc:
        clap_error(str(exc), where)
    except Missing as exc:
        fail(f"error: a value is required for '{exc}' but none was supplied\n\n"
             f"For more information, try '--help'.\n", 2)
    raise AssertionError("unreachable")


if sys.argv[1:] in (["--version"], ["-V"]):
    print("codex-cli 0.171.0")
    sys.exit(0)
if sys.argv[1:2] not in (["exec"], ["e"]):
    fail("fake codex: only `codex exec` is faked\n", 2)
args = sys.argv[2:]
opts, positionals, stop = options(args, "exec", "help-exec.txt", ("resume",))
resume: str | None = None
if stop < len(args):                          # `resume`: its own options
    more, positionals, _ = options(args[stop + 1:], "resume", "help-exec-resume.txt")
    for key, values in more.items():
        opts.setdefault(key, []).extend(values)
    if not positionals:
        fail("fake codex: `resume` without a SESSION_ID (--last) is not faked\n", 2)
    resume, positionals = positionals[0], positionals[1:]
if "--json" not in opts:
    fail("fake codex: only --json output is faked\n", 2)
if len(positionals) > 1:
    clap_error(positionals[1], "resume" if resume else "exec")

kind = stdin_kind()
given = positionals[0] if positionals else "-"
if given == "-":
    prompt = read_stdin()
    if not prompt.strip():
        record(prompt, kind)
        fail("No prompt provided via stdin.\n", 1)
else:
    prompt = given.encode()
    if kind not in ("tty", "closed", "null"):
        sys.stderr.write("Reading additional input from stdin...\n")
        extra = read_stdin()
        if extra:
            prompt += b"\n\n<stdin>\n" + extra + b"\n</stdin>"
record(prompt, kind)

run = scenario()
if resume is not None:
    if resume not in sessions(CLI):
        fail(f"Error: thread/resume: thread/resume failed: no rollout found for thread id "
             f"{resume} (code -32600)\n", 1)
    session = resume
    if run == "success":
        run = "resume"
else:
    session = new_session_id()
turns = len(sessions(CLI).get(session, {}).get("turns", [])) + 1
captured = (fixture(CLI, f"{run}.stdout") or "").replace(CAPTURED[run], session)
for n, line in enumerate(captured.splitlines()):
    event = json.loads(line)
    if event.get("type") == "turn.completed":
        event["usage"].update(input_tokens=11 * turns, output_tokens=7 * turns)
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    if n == 0:
        hang()
if run in ("success", "resume"):
    save_session(CLI, session, prompt)
    finish(0)
finish(1)
