"""Saved runs: ``runs list [--model NAME]`` prints a JSON list (``id``, ``model``, ``version``, ``method``,
``author``, ``created``, ...); ``runs show ID`` prints one run with its comments and array shapes;
``runs rerun ID`` makes a saved run again as a job of the queue, as its kind does it
(`explain.workspace.run_kinds.rerun_request`: an Output run's inputs each with the values it recorded, a
dataset's rows, a comparison's two versions, a layer ranking, a drift over its checkpoints, a generation's
prompts with each token's steps; computed afresh and saved as a run of its own) and prints
``{"max_abs_difference": x, "per_result": {name: {"max_abs_difference", ...}}, "run": the re-run's id,
"rerun_of": ID}`` (0 when nothing changed, up to float rounding on the same device; NaN (null) when
something changed shape). ``per_result`` is keyed as the kind differs: per method (Output: also
``relative_to_max``, ``saved_completeness_error``, ``now_completeness_error``, ``same_targets``; dataset),
per prompt (generation: ``same_tokens``), per result (comparison: ``probs_a`` ... ``rank_correlation``),
per layer (importance), per checkpoint (drift). A report or a page's snapshot is not re-run: one line
says why, exit code 2 (`explain.errors.CODES`, UsageError)."""
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
    rerun = sub.add_parser("rerun", help="make a saved run again as a job of its kind; how it differs (JSON)")
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
    """Make ``run_id`` again as the page's Re-run does (`run_kinds.rerun_request`: a fresh job of its
    kind, run here unless ``GLASSBOX_EXTERNAL_WORKER=1``); how the new run differs
    (`run_kinds.rerun_differences`). Reading the run needs viewer, queueing the job editor (`client.submit`
    checks); only an Output run's builder loads the run's version here (the worker shares this process's
    model cache, `service.models.shared_models`)."""
    from explain.config import external_worker
    from explain.service.client import finished_run, run_here, submit, wait
    from explain.service.models import ModelCache
    from explain.workspace.run_kinds import rerun_differences, rerun_request

    saved = ws.runs.open(actor, run_id)
    kind, params, arrays, title = rerun_request(
        saved, lambda: ModelCache(ws, size=1).get(actor, saved.info.model, saved.info.version))
    job = submit(ws, actor, kind, params, title=title, inputs=arrays, priority="interactive")
    job = wait(ws, actor, job.id) if external_worker() else run_here(ws, job.id)
    fresh = finished_run(ws, actor, job)
    return {**rerun_differences(saved, fresh), "run": fresh.info.id, "rerun_of": saved.info.id}
