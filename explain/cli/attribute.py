"""Attribute a model's outputs to its inputs with one method, as a job in the workspace's queue
(saved as a run, its id printed as ``run``); write OUT.npz."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from explain.cli.model_arg import load_inputs_arg, load_model_arg, model_file_arg
from explain.cli.out_file import replace_atomically
from explain.errors import UsageError
from explain.workspace import SavedRun
from explain.workspace.records import output_attributions
from sample_models import SAMPLE_NAMES

NAME = "attribute"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (or a sample name: shapes, cancer, sentiment)")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", required=True, help="inputs: .npy/.npz (which also tell the spec of a model that carries none) or a raw file the spec can read")
    parser.add_argument("--method", required=True, help="method name (see `python -m explain methods MODEL`)")
    parser.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    add_method_arguments(parser)
    parser.add_argument("--out", required=True, help="output .npz")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that become method parameters (`method_params`); ``batch`` has them too."""
    parser.add_argument("--steps", type=int, default=None, help="integration steps / samples")
    parser.add_argument("--baseline", default=None, help="zero | blurred | mean | FILE (.npy)")
    parser.add_argument("--background", default=None, help="background/reference samples file")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=None, help="rows per pass (default: fit to memory)")
    parser.add_argument("--tolerance", type=float, default=None, help="max completeness error; more steps until met")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="any other method parameter"
    )


def run(args: argparse.Namespace) -> dict:
    from explain.output.methods import get_method

    method = get_method(args.method)
    model = load_model_arg(args.model, args.spec, args.inputs)
    inputs = load_inputs_arg(args.inputs, model)
    params = method_params(method, args, model)
    run = explain_through_queue(args.model, model, inputs, [(method.name, params)], args.target)
    (result,) = output_attributions(run)
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        np.savez_compressed(
            tmp, values=result.values, targets=result.target, completeness_error=result.completeness_error,
            base_value=result.base_value, output=result.output,
        )
    return {
        "method": result.method,
        "targets": result.target,
        "completeness_error": result.completeness_error,
        "seconds": result.seconds,
        "device": result.device,
        "precision": result.precision,
        "params": run.info.params.get(result.method, {}),
        "notes": result.notes,
        "shape": list(result.values.shape),
        "out": str(out),
        "run": run.info.id,
    }


def explain_through_queue(model_arg: str, model, inputs: np.ndarray, asked: list[tuple[str, dict]],
                          target: int | None) -> SavedRun:
    """``asked`` (method, parameters) on ``inputs`` [N, ...] as a job in the workspace's queue, run
    in this process (or, with ``GLASSBOX_EXTERNAL_WORKER=1``, by the team's workers); its saved run.

    Raises:
        JobNotDone: the job failed (its reason) or was cancelled, e.g. on the Queue page.
    """
    from explain.cli.workspace_arg import cli_actor, cli_workspace
    from explain.config import external_worker
    from explain.service.client import finished_run, model_name_from_file, register_model, run_here, wait
    from explain.service.runners import explain_methods_job

    ws, actor = cli_workspace(), cli_actor()
    data, filename = model_file_arg(model_arg)
    name = model_arg if model_arg in SAMPLE_NAMES and not Path(model_arg).exists() else model_name_from_file(
        Path(model_arg).name)
    version = register_model(ws, actor, model, data, filename, name)
    job_params, arrays, title = explain_methods_job(model, version.name, version.version, inputs, asked, target)
    job = ws.jobs.submit(actor, "explain", job_params, title=title, inputs=arrays, priority="interactive")
    job = wait(ws, actor, job.id) if external_worker() else run_here(ws, job.id, loaded=model)
    return finished_run(ws, actor, job)


def method_params(method, args: argparse.Namespace, model) -> dict:
    """CLI flags (`add_method_arguments`) -> method parameters; flags a method has no use for are refused."""
    specs = method.params
    given: dict = {}
    flags = {
        "steps": args.steps, "device": args.device if args.device != "auto" else None,
        "precision": args.precision if args.precision != "auto" else None,
        "batch_size": args.batch_size, "tolerance": args.tolerance,
    }
    for name, value in flags.items():
        if value is None:
            continue
        key = _steps_key(specs) if name == "steps" else name
        if key not in specs:
            raise UsageError(f"Method {method.name!r} takes no --{name.replace('_', '-')}.")
        given[key] = value
    if args.baseline is not None:
        if "baseline" not in specs:
            raise UsageError(f"Method {method.name!r} takes no --baseline.")
        if args.baseline in specs["baseline"].choices:
            given["baseline"] = args.baseline
        else:
            given["baseline"] = "file"
            given["baseline_array"] = load_inputs_arg(args.baseline, model)
    if args.background is not None:
        if "background" not in specs:
            raise UsageError(f"Method {method.name!r} takes no --background.")
        given["background"] = load_inputs_arg(args.background, model)
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--param wants NAME=VALUE, got {item!r}.")
        given[name.strip().replace("-", "_")] = value
    return given


def _steps_key(specs: dict) -> str:
    for key in ("steps", "samples", "nt_samples"):
        if key in specs:
            return key
    return "steps"
