"""`batchctl agents`: each configured agent, the binary it runs, its version, found or not.

One record per agent (CONTRACT.md): `name, adaptor, command` (the resolved path of its
binary, null when not found), `version` (what `--version` says, null when unknown),
`found`, `user`, `max_concurrent` (its `agents.NAME.max_concurrent`; null: no per-agent
limit). The binary is looked up as a job's adaptor looks it up (state.agentbin.locate:
`command`, else the adaptor's default binaries on the agent's PATH; `q` falls back to
`kiro-cli`), on batchctl's own PATH unless the agent's `env` sets one. A `command`
relative to the job's workspace cannot be resolved here and shows as not found.

Versions come from state.agentbin.versions: cached per binary (path, mtime, size) in
`<state_dir>/agent-versions.json`, which batchctl owns and writes atomically; a binary
whose `--version` was already asked is not run again until it changes. Exit 0 (even when
agents are missing: the listing says so).
"""

from __future__ import annotations

import os
from typing import Any

from supervisor.ctl.out import EXIT_OK, Ctx, table
from supervisor.state.agentbin import agent_records as records_of
from supervisor.state.agentbin import locate

__all__ = ["agent_records", "cmd_agents"]


def agent_records(ctx: Ctx) -> list[dict[str, Any]]:
    """The `agents --json` records, by agent name (batchctl owns the version cache)."""
    return records_of(ctx.cfg, ctx.layout, owner=True)


def cmd_agents(ctx: Ctx) -> int:
    """`agents`: the records, as a JSON array or a table."""
    records = agent_records(ctx)
    if ctx.json:
        ctx.emit(records)
        return EXIT_OK
    rows = [(r["name"], r["adaptor"], "yes" if r["found"] else "no", r["version"],
             r["command"] or f"({_looked_for(ctx, r['name'])} not found)", r["user"])
            for r in records]
    for line in table(rows, header=("NAME", "ADAPTOR", "FOUND", "VERSION", "COMMAND", "USER")):
        ctx.say(line)
    return EXIT_OK


def _looked_for(ctx: Ctx, name: str) -> str:
    """The command an agent looks for (its `command`, else its adaptor's first default)."""
    return locate(ctx.cfg.agents[name], os.environ).command
