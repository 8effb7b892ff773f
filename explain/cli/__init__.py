"""`python -m explain SUBCOMMAND ...` — the command-line contract of DESIGN.md.

Each subcommand lives in its own module here and exposes:

    NAME: str
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> dict   # the JSON printed on stdout

``main`` prints that dict as one JSON object and exits 0; a `UsageError`
exits 2 and an `InputRefused` exits 3, each with a one-line reason on stderr
and never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

import numpy as np

from ..errors import GlassboxError, InputRefused, UsageError

#: modules under explain.cli, in the order `--help` lists them.
SUBCOMMAND_MODULES = ("inspect", "methods", "attribute", "attention", "training", "report")

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2 anyway
        raise UsageError(message)


def to_json_safe(obj):
    """Plain JSON values: arrays to lists, NaN/inf to null, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m explain", description="Glassbox: explain PyTorch models.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for mod_name in SUBCOMMAND_MODULES:
        mod = importlib.import_module(f"{__name__}.{mod_name}")
        p = sub.add_parser(mod.NAME, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "_run", None):
            raise UsageError("Missing subcommand. Run `python -m explain --help`.")
        result = args._run(args)
    except UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except InputRefused as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except GlassboxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    json.dump(to_json_safe(result), sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return EXIT_OK
