"""HTTP API tokens: ``tokens add NAME --role ROLE`` prints ``{"token": ...}`` once; only its hash is stored."""
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


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    if getattr(args, "action", None) != "add":
        raise UsageError("Missing action: tokens add NAME --role ROLE.")
    ws = cli_workspace()
    return {"name": args.name, "role": args.role, "token": ws.users.add_token(cli_actor(), args.name, args.role)}
