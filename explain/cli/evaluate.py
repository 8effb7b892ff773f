"""Measure the quality of explanations: several methods, several metrics, as one job of the
workspace's queue (saved as a run with its quality); writes Q.json.

Prints (and writes to ``--out``) ``{"methods": {METHOD: {METRIC: {"per_input": [...],
"mean": x, "random_baseline": y or null}}}}``; the ``randomization`` metric adds ``curve``
(the mean rank correlation after each step, the original first) and ``layers``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from explain.cli.model_arg import load_inputs_arg, load_model_arg
from explain.cli.out_file import replace_atomically
from explain.errors import UsageError

NAME = "evaluate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (or a sample name: shapes, cancer, sentiment)")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", required=True, help="inputs: .npy/.npz or a raw file the spec can read; a folder of such files is read in name order")
    parser.add_argument("--methods", required=True, help="comma-separated method names, e.g. integrated_gradients,saliency")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metrics (default: the cheap ones the model and masks allow): "
                             "deletion, insertion, faithfulness_correlation, infidelity, max_sensitivity, "
                             "randomization, pointing_game, relevance_mass, sparseness, complexity")
    parser.add_argument("--masks", default=None,
                        help="ground-truth masks for pointing_game / relevance_mass: .npy, or .npz with 'masks'")
    parser.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    parser.add_argument("--param", action="append", default=[], metavar="METRIC.NAME=VALUE",
                        help="a metric parameter, e.g. deletion.steps=50")
    parser.add_argument("--method-param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                        help="a method parameter, e.g. integrated_gradients.steps=32")
    parser.add_argument("--out", required=True, help="output .json")


def run(args: argparse.Namespace) -> dict:
    from explain.cli import to_json_safe
    from explain.cli.job_arg import run_as_job
    from explain.output.methods import get_method
    from explain.output.metrics import get_metric
    from explain.output.metrics.quality import default_metrics, quality_json
    from explain.service.runners import explain_methods_job
    from explain.workspace.records import output_quality

    methods = _names(args.methods, "--methods")
    for name in methods:
        get_method(name)  # unknown names: exit 2 before loading anything
    model = load_model_arg(args.model, args.spec, args.inputs)
    inputs = load_inputs_arg(args.inputs, model)
    masks = read_masks(args.masks) if args.masks else None
    metrics = _names(args.metrics, "--metrics") if args.metrics else default_metrics(model, masks is not None)
    for name in metrics:
        get_metric(name)  # unknown names: exit 2 before any explanation runs
    metric_params = _dotted(args.param, "--param")
    method_params = _dotted(args.method_param, "--method-param")
    run = run_as_job(args.model, model, "explain", lambda name, version: explain_methods_job(
        model, name, version, inputs, [(m, method_params.get(m, {})) for m in methods], args.target,
        metrics=[(m, metric_params.get(m, {})) for m in metrics], masks=masks))
    payload = to_json_safe(quality_json(output_quality(run)))
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
    return payload


def read_masks(path: str) -> np.ndarray:
    """`explain.output.metrics.masks.read_masks` of a path that must exist."""
    from explain.output.metrics.masks import read_masks as read

    if not Path(path).exists():
        raise UsageError(f"No such masks file: {path}.")
    return read(path)


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{flag} needs at least one name.")
    return names


def _dotted(items: list[str], flag: str) -> dict[str, dict[str, str]]:
    """['a.b=c', ...] -> {'a': {'b': 'c'}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        owner, dot, name = key.strip().partition(".")
        if not sep or not dot or not owner or not name:
            raise UsageError(f"{flag} wants NAME.PARAM=VALUE, got {item!r}.")
        out.setdefault(owner, {})[name.replace("-", "_")] = value
    return out
