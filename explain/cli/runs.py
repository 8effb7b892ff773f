"""Saved runs: ``runs list [--model NAME]`` prints a JSON list (``id``, ``model``, ``version``, ``method``,
``author``, ``created``, ...); ``runs show ID`` prints one run with its comments and array shapes."""
from __future__ import annotations

import argparse

from explain.errors import UsageError

NAME = "runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", parser_class=type(parser))
    listing = sub.add_parser("list", help="saved runs, newest first")
    listing.add_argument("--model", default=None, help="only this model's runs")
    show = sub.add_parser("show", help="one saved run")
    show.add_argument("id")


def run(args: argparse.Namespace):
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    if not getattr(args, "action", None):
        raise UsageError("Missing action: runs list|show ID.")
    ws, actor = cli_workspace(), cli_actor()
    if args.action == "list":
        return [r.to_dict() for r in ws.runs.list(actor, model=args.model)]
    saved = ws.runs.open(actor, args.id)
    out = saved.info.to_dict()
    out["inputs"] = {k: list(v.shape) for k, v in saved.inputs.items()}
    out["results"] = {k: list(v.shape) for k, v in saved.results.items()}
    out["comments"] = [c.to_dict() for c in ws.review.comments(actor, args.id)]
    out["decisions"] = [d.to_dict() for d in ws.review.decisions(actor, saved.info.model, saved.info.version)]
    return out
