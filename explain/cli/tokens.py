"""HTTP API tokens: ``tokens add NAME --role ROLE`` prints ``{"token": ...}`` once (only its hash is
stored); ``tokens list`` (names and roles), ``tokens remove NAME`` (revoke)."""
from __future__ import annotations

import argparse

from explain.errors import UsageError
from explain.workspace.roles import ROLES

NAME = "tokens"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", parser_class=type(parser))
    add = sub.add_parser("add", help="create a token (printed once)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    sub.add_parser("list", help="token names and roles (never the tokens)")
    remove = sub.add_parser("remove", help="revoke a token")
    remove.add_argument("name")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    action = getattr(args, "action", None)
    if not action:
        raise UsageError("Missing action: tokens add NAME --role ROLE | list | remove NAME.")
    ws = cli_workspace()
    if action == "list":
        return {"tokens": ws.users.tokens(cli_actor())}
    if action == "remove":
        return ws.users.remove_token(cli_actor(), args.name)
    return {"name": args.name, "role": args.role, "token": ws.users.add_token(cli_actor(), args.name, args.role)}
