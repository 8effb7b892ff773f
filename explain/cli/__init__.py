"""`python -m explain SUBCOMMAND ...` — the command-line contract (docs/ARCHITECTURE.md, "The command line").

Each subcommand lives in its own module here and exposes:

    NAME: str
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> dict   # the JSON printed on stdout

``main`` prints that dict as one JSON object and exits 0; a `UsageError`
exits 2 and an `InputRefused` exits 3, each with a one-line reason on stderr
and never a traceback. ``main`` enforces that for every subcommand: any other
exception (a model whose forward raises, RecursionError, MemoryError, a bug)
also becomes one line on stderr and exit 3, so subcommands need no catch-all
of their own. Files named by ``--out`` are written through
`explain.cli.out_file.replace_atomically`.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from explain.errors import GlassboxError, InputRefused, UsageError, exit_code, one_line
from explain.jsonable import to_json_safe

#: modules under explain.cli, in the order `--help` lists them (a module ``logit_lens`` is the subcommand ``logit-lens``).
SUBCOMMAND_MODULES = ("inspect", "methods", "attribute", "evaluate", "batch", "attention", "generate", "logit_lens",
                      "compare", "training", "report", "models", "runs", "users", "tokens", "worker", "serve")

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2 anyway
        raise UsageError(message)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, only the subcommand it names is imported (the others are listed
    by their docstring's first line, read without importing them), so ``--help`` and the workspace
    subcommands never import torch. Without ``argv`` every subcommand is imported."""
    parser = _Parser(prog="python -m explain", description="Glassbox: explain PyTorch models.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for mod_name in SUBCOMMAND_MODULES:
        if chosen is not None and subcommand_name(mod_name) != chosen:
            sub.add_parser(subcommand_name(mod_name), help=_help_line(mod_name))
            continue
        mod = importlib.import_module(f"{__name__}.{mod_name}")
        p = sub.add_parser(mod.NAME, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def subcommand_name(mod_name: str) -> str:
    """The subcommand a module of `SUBCOMMAND_MODULES` answers to (``logit_lens`` -> ``logit-lens``)."""
    return mod_name.replace("_", "-")


def _help_line(mod_name: str) -> str:
    """The first line of a subcommand module's docstring, from its source (not imported)."""
    path = Path(__file__).with_name(f"{mod_name}.py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


#: subcommands whose first argument is a model file
MODEL_SUBCOMMANDS = frozenset({"inspect", "methods", "attribute", "evaluate", "batch", "attention", "report",
                               "generate", "logit-lens", "compare"})


def prestart_for(argv: Sequence[str]) -> bool:
    """Start the model processes' zygote at once when ``argv`` names a TorchScript or ``.pt2``
    file (a zip that is neither a Hugging Face model nor a NumPy archive): its imports and warm-up
    then run beside this process's own imports instead of after them. True when started."""
    import zipfile

    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in MODEL_SUBCOMMANDS:
        return False
    rest = list(argv)[list(argv).index(command) + 1:]
    path = Path(rest[0]) if rest and not rest[0].startswith("-") else None
    try:
        if path is None or not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    if not names or any(n.rsplit("/", 1)[-1] == "config.json" for n in names) or all(n.endswith(".npy") for n in names):
        return False
    from explain.loading.sandbox import prestart_zygote
    from explain.loading.sandbox_zygote import MODEL_PRELOAD

    return prestart_zygote(MODEL_PRELOAD)


def share_zygotes_for(argv: Sequence[str]) -> bool:
    """A subcommand that loads a model forks its model processes from the zygote this user's calls
    share (`explain.loading.sandbox_zygote.SharedZygote`): a repeated call finds it warm instead of
    importing torch and warming one up again. ``GLASSBOX_ZYGOTE_IDLE_S=0`` turns it off. True when on."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in MODEL_SUBCOMMANDS:
        return False
    from explain.config import zygote_idle_s
    from explain.loading.sandbox_zygote import share_zygotes

    idle = zygote_idle_s()
    share_zygotes(idle)
    return idle > 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand: one JSON object on stdout, or one line on stderr; the exit code.

    Returns:
        0 ok, 2 usage error, 3 input refused or the run failed, 130 interrupted.
    """
    command = "explain"
    shared = False
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        shared = share_zygotes_for(argv)
        prestart_for(argv)
        args = build_parser(argv).parse_args(argv)
        command = getattr(args, "command", None) or command
        if not getattr(args, "_run", None):
            raise UsageError("Missing subcommand. Run `python -m explain --help`.")
        text = json.dumps(to_json_safe(args._run(args)), allow_nan=False)
    except GlassboxError as exc:  # the exit code from explain.errors.CODES, the one table
        print(f"{'refused' if isinstance(exc, InputRefused) else 'error'}: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"interrupted: {command} stopped before it finished.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the contract: never a traceback; RecursionError and MemoryError included
        detail = one_line(exc) if str(exc).strip() else f"{type(exc).__name__}: no message"
        print(f"error: {command} failed ({detail}).", file=sys.stderr)
        return exit_code(exc)
    finally:
        if shared:
            from explain.loading.sandbox_zygote import share_zygotes

            share_zygotes(0)
    sys.stdout.write(text + "\n")
    return EXIT_OK
