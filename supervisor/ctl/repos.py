"""batchctl's repository commands: `repo add NAME URL [--branch B] [--exclusive]`, `repo list`,
`repo remove NAME`.

`repo list` only reads (the configuration and repos.json, owner=False). `repo add` and
`repo remove` write repos.json through supervisor.state.repos (under the flock on repos.lock,
atomically; see that module for the crash argument). None of them needs batchd running:
the scheduler reads the registry when it dispatches a job.

Exit codes (CONTRACT.md): 0 done; 1 the operation failed or the thing was not found (an
unreachable remote when resolving the default branch, removing a repository of the
configuration, an unknown name); 2 bad input (a malformed name, URL or branch, a name the
configuration defines or already registered, a usage mistake). A refused command writes
nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx, table
from supervisor.state.repos import RepoError, add, read_registry, remove

__all__ = [
    "LIST_FIELDS",
    "cmd_repo_add",
    "cmd_repo_list",
    "cmd_repo_remove",
    "repo_records",
    "run_repo",
    "setup_repo",
]

#: The keys of each record `repo list --json` prints, in order.
LIST_FIELDS: tuple[str, ...] = ("name", "url", "branch", "exclusive", "source", "added_at")


def _record(name: str, body: dict[str, Any], source: str) -> dict[str, Any]:
    return {"name": name, "url": body.get("url"), "branch": body.get("branch"),
            "exclusive": bool(body.get("exclusive", False)), "source": source,
            "added_at": body.get("added_at")}


def repo_records(ctx: Ctx) -> list[dict[str, Any]]:
    """Every repository a job may use: the configuration's (in its order), then the
    registered ones by name. A registered name the configuration also defines is not
    listed (the configuration's wins); unreadable registry content is named on stderr."""
    out = [_record(name, {"url": r.url, "branch": r.branch, "exclusive": r.exclusive},
                   "config") for name, r in ctx.cfg.repositories.items()]
    reg = read_registry(ctx.layout)
    for problem in reg.problems:
        ctx.error(problem)
    for name in sorted(reg.repos):
        if name in ctx.cfg.repositories:
            ctx.error(f"registered repository {name!r} is shadowed by the configuration's")
            continue
        repo = reg.repos[name]
        out.append(_record(name, {"url": repo.url, "branch": repo.branch,
                                  "exclusive": repo.exclusive,
                                  "added_at": reg.added_at.get(name)}, "registered"))
    return out


def _fail(exc: RepoError) -> CtlError:
    return CtlError(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILED)


def cmd_repo_list(ctx: Ctx) -> int:
    """`repo list`: the configured and registered repositories."""
    records = repo_records(ctx)
    if ctx.json:
        ctx.emit(records)
        return EXIT_OK
    if not records:
        ctx.note("no repositories")
        return EXIT_OK
    rows = [(r["name"], r["source"], r["branch"] or "(default)", r["exclusive"], r["url"])
            for r in records]
    for line in table(rows, header=("NAME", "SOURCE", "BRANCH", "EXCLUSIVE", "URL")):
        ctx.say(line)
    return EXIT_OK


def cmd_repo_add(ctx: Ctx, name: str, url: str, branch: str | None, exclusive: bool) -> int:
    """`repo add NAME URL [--branch B] [--exclusive]`: register a repository."""
    try:
        entry = add(ctx.cfg, ctx.layout, name, url, branch=branch, exclusive=exclusive,
                    note=ctx.error)
    except RepoError as exc:
        raise _fail(exc) from None
    record = _record(name, entry, "registered")
    if ctx.json:
        ctx.emit(record)
    else:
        how = " (exclusive)" if record["exclusive"] else ""
        ctx.say(f"registered repository {name}: {record['url']} branch "
                f"{record['branch']}{how}")
    return EXIT_OK


def cmd_repo_remove(ctx: Ctx, name: str) -> int:
    """`repo remove NAME`: unregister a repository added with `repo add`."""
    try:
        entry = remove(ctx.cfg, ctx.layout, name, note=ctx.error)
    except RepoError as exc:
        raise _fail(exc) from None
    record = _record(name, entry, "registered")
    if ctx.json:
        ctx.emit({**record, "removed": True})
    else:
        ctx.say(f"removed repository {name} ({record['url']})")
    return EXIT_OK


def _json_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `repo list --json` and `repo --json list` both work without one
    # overriding the other (batchctl adds --json to the `repo` parser itself).
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document")


def setup_repo(p: argparse.ArgumentParser) -> None:
    """Arguments of `repo add NAME URL [--branch B] [--exclusive]`, `repo list`,
    `repo remove NAME`."""
    sub = p.add_subparsers(dest="repo_action", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="register a repository",
                       description="Register a repository (added to those in the "
                                   "configuration). Without --branch the remote's default "
                                   "branch is looked up now.")
    a.add_argument("name", metavar="NAME", help="repository name (as jobs' --repo names it)")
    a.add_argument("url", metavar="URL", help="a git URL or a local path")
    a.add_argument("--branch", metavar="B", help="branch (default: the remote's default)")
    a.add_argument("--exclusive", action="store_true",
                   help="a job on it holds its lock for its whole run")
    _json_flag(a)
    ls = sub.add_parser("list", help="the configured and registered repositories",
                        description="The configured and registered repositories.")
    _json_flag(ls)
    rm = sub.add_parser("remove", help="unregister a repository added with `repo add`",
                        description="Unregister a repository added with `repo add`.")
    rm.add_argument("name", metavar="NAME", help="repository name")
    _json_flag(rm)


def run_repo(ctx: Ctx, args: argparse.Namespace) -> int:
    """Dispatch `repo add`, `repo list`, `repo remove`."""
    action = args.repo_action
    if action == "add":
        return cmd_repo_add(ctx, args.name, args.url, args.branch, args.exclusive)
    if action == "remove":
        return cmd_repo_remove(ctx, args.name)
    return cmd_repo_list(ctx)
