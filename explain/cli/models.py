"""The model registry: ``models add FILE --name NAME [--alias A] [--spec SPEC]`` registers a version
(JSON: ``name``, ``version``, ``sha256``, ...; the existing version if the file is one already);
``models list [--name NAME]`` prints ``{"models": [...]}``, one object per version."""
from __future__ import annotations

import argparse
from pathlib import Path

from explain.errors import UsageError

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


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    if not getattr(args, "action", None):
        raise UsageError("Missing action: models add|list.")
    ws, actor = cli_workspace(), cli_actor()
    if args.action == "list":  # the workspace only: no torch (the loaders import it)
        return {"models": [v.to_dict() for v in ws.registry.list(actor, args.name)]}
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
