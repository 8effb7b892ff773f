"""The model registry: ``models add FILE --name NAME [--alias A] [--spec SPEC]`` registers a version
(JSON: ``name``, ``version``, ``sha256``, ..., ``protected``; the existing version if the file is one
already); ``models list [--name NAME]`` prints ``{"models": [...], "protected": [...]}``, one object
per version and one per protected alias (``model``, ``alias``, ``approvers``, ...).

Protected aliases: ``models protect NAME ALIAS [--approvers a,b]`` (admins; prints the protection),
``models unprotect NAME ALIAS`` (``{"unprotected": "NAME@ALIAS"}``). A protected alias moves only
through ``models decide NAME@vN --verdict approve --note WHY --comparison RUN --move-alias ALIAS``,
which prints the decision (``id``, ``model``, ``version``, ``verdict``, ``note``, ``alias``,
``comparison_run``, ...); ``--alias`` and any other way are refused (exit 3).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from explain.errors import UsageError
from explain.workspace.review import VERDICTS

NAME = "models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", parser_class=type(parser))
    add = sub.add_parser("add", help="register a model file as a version")
    add.add_argument("file")
    add.add_argument("--name", required=True)
    add.add_argument("--alias", default=None, help="point this alias (e.g. candidate) at the version")
    add.add_argument("--spec", default=None, help="spec JSON stored with the version")
    listing = sub.add_parser("list", help="registered versions")
    listing.add_argument("--name", default=None)
    protect = sub.add_parser("protect", help="protect an alias: it moves only through an approvers' decision")
    protect.add_argument("name")
    protect.add_argument("alias")
    protect.add_argument("--approvers", default="", help="comma-separated user names who may approve a move")
    unprotect = sub.add_parser("unprotect", help="lift an alias's protection")
    unprotect.add_argument("name")
    unprotect.add_argument("alias")
    decide = sub.add_parser("decide", help="record a decision on a version (NAME@vN), optionally moving an alias")
    decide.add_argument("ref")
    decide.add_argument("--verdict", required=True, choices=VERDICTS)
    decide.add_argument("--note", default="", help="the justification")
    decide.add_argument("--comparison", default=None, help="the saved comparison run the decision was made on")
    decide.add_argument("--move-alias", default=None, help="on approval, point this alias at the version")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    if not getattr(args, "action", None):
        raise UsageError("Missing action: models add|list|protect|unprotect|decide.")
    ws, actor = cli_workspace(), cli_actor()
    if args.action == "list":  # the workspace only: no torch (the loaders import it)
        return {"models": [v.to_dict() for v in ws.registry.list(actor, args.name)],
                "protected": [p.to_dict() for p in ws.registry.protections(actor, args.name)]}
    if args.action == "protect":
        approvers = [a for a in args.approvers.split(",") if a.strip()]
        return ws.registry.protect(actor, args.name, args.alias, approvers).to_dict()
    if args.action == "unprotect":
        ws.registry.unprotect(actor, args.name, args.alias)
        return {"unprotected": f"{args.name}@{args.alias}"}
    if args.action == "decide":
        version = ws.registry.resolve(actor, args.ref)  # NAME, NAME@vN or NAME@ALIAS
        return ws.review.decide(actor, version.name, version.version, args.verdict, args.note,
                                move_alias=args.move_alias, comparison_run=args.comparison).to_dict()
    from explain.loading.huggingface import folder_as_zip
    from explain.loading.loader import sniff_format
    from explain.loading.source import read_source

    path = Path(args.file)
    if path.is_dir():  # a Hugging Face folder: stored as the zip the loader reads
        data, filename = folder_as_zip(path)
    else:
        data, filename = read_source(path)
    sniff_format(data, filename)  # refuses a file that is no model format Glassbox reads
    spec = Path(args.spec).read_bytes() if args.spec else None
    return ws.registry.register(actor, args.name, data, filename, spec_json=spec, alias=args.alias).to_dict()
