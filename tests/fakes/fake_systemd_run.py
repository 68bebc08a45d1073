"""A fake `systemd-run`: records its argv, then starts the command detached like a unit would.

Only what the launcher uses is understood: --setenv=K=V (the unit's whole environment, as
systemd-run passes none of the caller's), --property=StandardOutput=append:PATH (and
StandardError), and the command after `--`. FAKE_SYSTEMD_RECORD names the argv record;
FAKE_SYSTEMD_FAIL makes it fail like systemd-run does when the unit exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

args = sys.argv[1:]
with open(os.environ["FAKE_SYSTEMD_RECORD"], "w", encoding="utf-8") as f:
    json.dump(args, f)
if os.environ.get("FAKE_SYSTEMD_FAIL"):
    sys.stderr.write("Failed to start transient service unit: Unit batchd-job-x.service "
                     "was already loaded or has a fragment file.\n")
    sys.exit(1)
split = args.index("--")
options, command = args[:split], args[split + 1:]
env = {}
log = os.devnull
for opt in options:
    if opt.startswith("--setenv="):
        key, _, value = opt[len("--setenv="):].partition("=")
        env[key] = value
    elif opt.startswith("--property=StandardOutput=append:"):
        log = opt.split("append:", 1)[1]
with open(log, "ab") as out:
    subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                     start_new_session=True, cwd="/")
