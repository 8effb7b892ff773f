"""Workspace accounts: ``users add NAME --role ROLE`` (password from stdin), ``list``, ``set-role``,
``set-password NAME`` (from stdin; the account's sign-ins end), ``remove``.

The first account must be an admin; from then on the app asks everyone to sign in.
JSON: ``add`` / ``set-role`` / ``set-password``: the user (``name``, ``role``, ``email``, ``created``, ``has_password``);
``list``: ``{"users": [...]}``; ``remove``: ``{"removed": NAME}``.
"""
from __future__ import annotations

import argparse
import sys

from explain.errors import UsageError
from explain.workspace.roles import ROLES

NAME = "users"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", parser_class=type(parser))
    add = sub.add_parser("add", help="add an account; the password is read from stdin")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--email", default=None)
    add.add_argument("--no-password", action="store_true", help="an OIDC-only account (signs in with st.login)")
    sub.add_parser("list", help="list accounts")
    set_role = sub.add_parser("set-role", help="change an account's role")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=ROLES)
    set_password = sub.add_parser("set-password", help="a new password, read from stdin (ends the account's sign-ins)")
    set_password.add_argument("name")
    remove = sub.add_parser("remove", help="remove an account")
    remove.add_argument("name")


def _read_password() -> str:
    text = sys.stdin.readline() if not sys.stdin.isatty() else __import__("getpass").getpass("Password: ")
    password = text.rstrip("\r\n")
    if not password:
        raise UsageError("No password on stdin.", "Pipe it in: `echo \"$PASSWORD\" | python -m explain users add ...`.")
    return password


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    if not getattr(args, "action", None):
        raise UsageError("Missing action: users add|list|set-role|set-password|remove.")
    ws, actor = cli_workspace(), cli_actor()
    if args.action == "add":
        password = None if args.no_password else _read_password()
        return ws.users.add(actor, args.name, args.role, password, email=args.email).to_dict()
    if args.action == "list":
        return {"users": [u.to_dict() for u in ws.users.list(actor)]}
    if args.action == "set-role":
        return ws.users.set_role(actor, args.name, args.role).to_dict()
    if args.action == "set-password":
        return ws.users.set_password(actor, args.name, _read_password()).to_dict()
    return ws.users.remove(actor, args.name)
