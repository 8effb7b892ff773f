"""Saved runs: ``runs list [--model NAME]`` prints a JSON list (``id``, ``model``, ``version``, ``method``,
``author``, ``created``, ...); ``runs show ID`` prints one run with its comments and array shapes;
``runs rerun ID`` recomputes a saved Output run as a job of the queue (each input with the values it
recorded, saved as a run of its own) and prints ``{"max_abs_difference": x, "per_result": {method:
{"max_abs_difference", "relative_to_max", "saved_completeness_error", "now_completeness_error",
"same_targets"}}, "run": the re-run's id, "rerun_of": ID}`` (0 when nothing changed, up to float
rounding on the same device)."""
from __future__ import annotations

import argparse
import math

from explain.errors import UsageError

NAME = "runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", parser_class=type(parser))
    listing = sub.add_parser("list", help="saved runs, newest first")
    listing.add_argument("--model", default=None, help="only this model's runs")
    show = sub.add_parser("show", help="one saved run")
    show.add_argument("id")
    rerun = sub.add_parser("rerun", help="recompute a saved Output run as a job; how it differs (JSON)")
    rerun.add_argument("id")


def run(args: argparse.Namespace):
    from explain.cli.workspace_arg import cli_actor, cli_workspace

    if not getattr(args, "action", None):
        raise UsageError("Missing action: runs list|show ID|rerun ID.")
    ws, actor = cli_workspace(), cli_actor()
    if args.action == "list":
        return [r.to_dict() for r in ws.runs.list(actor, model=args.model)]
    if args.action == "rerun":
        return rerun(ws, actor, args.id)
    saved = ws.runs.open(actor, args.id)
    out = saved.info.to_dict()
    out["inputs"] = {k: list(v.shape) for k, v in saved.inputs.items()}
    out["results"] = {k: list(v.shape) for k, v in saved.results.items()}
    out["comments"] = [c.to_dict() for c in ws.review.comments(actor, args.id)]
    out["decisions"] = [d.to_dict() for d in ws.review.decisions(actor, saved.info.model, saved.info.version)]
    return out


def rerun(ws, actor, run_id: str) -> dict:
    """Run ``run_id``'s explanation again as the page's Re-run does (`runners.rerun_job`: a fresh
    ``explain`` job, run here unless ``GLASSBOX_EXTERNAL_WORKER=1``); how the new run differs.
    Reading the run and its version needs viewer, queueing the job editor (`client.submit` checks)."""
    from explain.config import external_worker
    from explain.service.client import finished_run, run_here, submit, wait
    from explain.service.models import ModelCache
    from explain.service.runners import rerun_job
    from explain.workspace.records import output_differences

    saved = ws.runs.open(actor, run_id)
    model = ModelCache(ws, size=1).get(actor, saved.info.model, saved.info.version)
    params, arrays, title = rerun_job(model, saved)
    job = submit(ws, actor, "explain", params, title=title, inputs=arrays, priority="interactive")
    job = wait(ws, actor, job.id) if external_worker() else run_here(ws, job.id, loaded=model)
    fresh = finished_run(ws, actor, job)
    per_result = {row["method"]: {"max_abs_difference": row["max |difference|"],
                                  "relative_to_max": row["relative to the map's max"],
                                  "saved_completeness_error": row["saved completeness error"],
                                  "now_completeness_error": row["now completeness error"],
                                  "same_targets": row["same targets"]} for row in output_differences(saved, fresh)}
    differences = [r["max_abs_difference"] for r in per_result.values()]
    largest = float("nan") if any(math.isnan(d) for d in differences) else max(differences, default=0.0)
    return {"max_abs_difference": largest, "per_result": per_result,  # NaN (null): a map changed shape
            "run": fresh.info.id, "rerun_of": saved.info.id}
