"""Parse training logs and diagnose the curves (overfitting, plateaus, divergence, ...).

``python -m explain training LOG [LOG...]`` reads CSV (Lightning, Keras, any
epoch/step table), JSON / JSON lines, TensorBoard event files or folders, and
checkpoints with a stored ``history``; several logs are merged into one run (the top-level fields), and
``runs`` reads them as the Training page and the report do by default (`default_log_mode`): each log a
run with its own findings when they record the same series, else the one merged run.
``warnings`` lists what was read only in part: a TensorBoard file truncated or
damaged at some record (the values before it are used), or a log so long that
its rows were averaged down (see `explain.training.downsampling`).
"""
from __future__ import annotations

import argparse

from explain.errors import UsageError
from explain.finding import sort_findings
from explain.training.findings import diagnose
from explain.training.history import ROLES, default_log_mode, merge_histories, read_histories

NAME = "training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG", help="log files or TensorBoard folders")
    parser.add_argument(
        "--role", action="append", default=[], metavar="ROLE=COLUMN",
        help=f"assign a column to a role ({', '.join(ROLES)}); COLUMN may be empty to clear it",
    )
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience reported with best_epoch")


def _parse_roles(items: list[str]) -> dict[str, str | None]:
    roles: dict[str, str | None] = {}
    for item in items:
        role, sep, column = item.partition("=")
        if not sep or role not in ROLES:
            raise UsageError(f"--role expects ROLE=COLUMN with ROLE one of {', '.join(ROLES)}; got {item!r}.")
        roles[role] = column or None
    return roles


def run(args: argparse.Namespace) -> dict:
    if args.patience < 1:
        raise UsageError("--patience must be at least 1.")
    roles = _parse_roles(args.role)
    histories = read_histories(args.logs)
    history = merge_histories(histories)
    if roles:
        history = history.with_roles(**roles)
    findings = sort_findings(diagnose(history, patience=args.patience))  # worst first, as the pages show them
    frame = history.by_epoch()
    from explain.viz.training import run_names  # (plotly: only for this command)

    runs = histories if default_log_mode(histories) == "runs" else [history]
    if roles and len(runs) > 1:
        runs = [h.with_roles(**roles) for h in runs]
    return {
        "runs": [{"name": name, "sources": h.sources, "series": h.series_lengths(), "roles": h.roles,
                  "findings": [f.to_dict() for f in sort_findings(diagnose(h, patience=args.patience))],
                  "warnings": h.warnings} for name, h in zip(run_names(runs), runs)],
        "series": history.series_lengths(),
        "findings": [f.to_dict() for f in findings],
        "evidence": [f.to_dict()["evidence"] for f in findings],  # also in each finding; kept for older scripts
        "roles": history.roles,
        "x": history.default_x,
        "x_columns": history.x_columns,
        "points": int(len(frame)),
        "sources": history.sources,
        "warnings": history.warnings,
    }
