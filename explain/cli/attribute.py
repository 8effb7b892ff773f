"""Attribute a model's outputs to its inputs with one method, as a job in the workspace's queue
(saved as a run, its id printed as ``run``); write OUT.npz."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from explain.cli.model_arg import load_inputs_arg, load_model_arg
from explain.cli.out_file import replace_atomically
from explain.errors import UsageError

NAME = "attribute"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (or a sample name: shapes, cancer, sentiment)")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", required=True, help="inputs: .npy/.npz (which also tell the spec of a model that carries none) or a raw file the spec can read; a folder of such files is read in name order")
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
    from explain.cli.job_arg import run_as_job
    from explain.output.methods import get_method
    from explain.service.runners import explain_methods_job
    from explain.workspace.records import output_attributions

    method = get_method(args.method)
    model = load_model_arg(args.model, args.spec, args.inputs)
    inputs = load_inputs_arg(args.inputs, model)
    params = method_params(method, args, model)
    run = run_as_job(args.model, model, "explain", lambda name, version: explain_methods_job(
        model, name, version, inputs, [(method.name, params)], args.target))
    (result,) = output_attributions(run)
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        np.savez_compressed(
            tmp, values=result.values, targets=result.target, completeness_error=result.completeness_error,
            base_value=result.base_value, output=result.output,
        )
    from explain.output.prediction_checks import one_class_warning

    warning = one_class_warning(model.predict_proba(inputs), model.spec)
    return {
        **({"warning": warning} if warning else {}),
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
