"""`batchctl token add NAME --scope S`, `token list`, `token revoke NAME`: the api's bearer tokens.

batchctl is the one writer of the tokens file (state.tokens has the format, the lock and
the crash argument). `add` prints the token once (only its hash is stored; it is never
logged); `list` shows names, scopes and creation times, never a hash. Exit codes: 0 done;
1 `revoke` of an unknown name, `list` of a tokens file that is unusable (corrupt); 2 a bad
name or scope, or `add` of a name in use.
"""

from __future__ import annotations

import argparse

from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx, cell, table
from supervisor.state.tokens import SCOPES, TokenError, add, list_tokens, revoke, tokens_path

__all__ = ["run_token", "setup_token"]


def _fail(exc: TokenError) -> CtlError:
    return CtlError(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILED)


def cmd_token_add(ctx: Ctx, name: str, scope: str) -> int:
    """`token add NAME --scope S`: make a token and print it (the only time it is shown)."""
    path = tokens_path(ctx.cfg, ctx.layout)
    try:
        token = add(path, name, scope)
    except TokenError as exc:
        raise _fail(exc) from None
    if ctx.json:
        ctx.emit({"name": name, "scope": scope, "token": token})
    else:
        ctx.say(token)
        ctx.note(f"token {name} ({scope}) added to {path}; it is shown only now")
    return EXIT_OK


def cmd_token_list(ctx: Ctx) -> int:
    """`token list`: names, scopes and creation times (never the hashes)."""
    try:
        records, problem = list_tokens(tokens_path(ctx.cfg, ctx.layout))
    except TokenError as exc:
        raise _fail(exc) from None
    if problem is not None:
        ctx.error(problem)
    if ctx.json:
        ctx.emit(records)
    elif records:
        for line in table(((r["name"], r["scope"], cell(r["created_at"])) for r in records),
                          header=("NAME", "SCOPE", "CREATED")):
            ctx.say(line)
    else:
        ctx.note("no tokens")
    return EXIT_OK


def cmd_token_revoke(ctx: Ctx, name: str) -> int:
    """`token revoke NAME`: the api refuses it from its next request on."""
    try:
        record = revoke(tokens_path(ctx.cfg, ctx.layout), name)
    except TokenError as exc:
        raise _fail(exc) from None
    if ctx.json:
        ctx.emit({**record, "revoked": True})
    else:
        ctx.say(f"revoked token {name} ({record['scope']})")
    return EXIT_OK


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document")


def setup_token(p: argparse.ArgumentParser) -> None:
    """Arguments of `token add NAME --scope S`, `token list`, `token revoke NAME`."""
    sub = p.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="make an API token (printed once)",
                       description="Make an API token; it is printed once, only its hash "
                                   "is stored.")
    a.add_argument("name", metavar="NAME", help="the token's name")
    a.add_argument("--scope", required=True, choices=SCOPES,
                   help="read < submit < admin")
    _json_flag(a)
    ls = sub.add_parser("list", help="the tokens: name, scope, created",
                        description="The tokens: name, scope, creation time.")
    _json_flag(ls)
    rm = sub.add_parser("revoke", help="remove a token (refused from the next request on)",
                        description="Remove a token; the api refuses it at once.")
    rm.add_argument("name", metavar="NAME", help="the token's name")
    _json_flag(rm)


def run_token(ctx: Ctx, args: argparse.Namespace) -> int:
    """Dispatch `token add`, `token list`, `token revoke`."""
    if args.token_action == "add":
        return cmd_token_add(ctx, args.name, args.scope)
    if args.token_action == "revoke":
        return cmd_token_revoke(ctx, args.name)
    return cmd_token_list(ctx)
