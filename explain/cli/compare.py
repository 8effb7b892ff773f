"""Compare two versions of a model on the same inputs (outputs, explanations, structure), as a job
in the workspace's queue saved as a ``comparison`` run (its id printed as ``run``).

``python -m explain compare A B --inputs X --method M [--out C.json]``: A and B are model files (or
bundled samples), or registry versions ``NAME@vN`` / ``NAME@ALIAS`` of the workspace the CLI opens
(``GLASSBOX_HOME`` / ``GLASSBOX_DATABASE_URL``). Both are explained for A's predicted class; stdout
is `explain.compare.comparison.Comparison.to_dict` plus ``run`` (and ``out``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from explain.cli.attribute import add_method_arguments

    parser.add_argument("a", help="version A: a model file, a sample name, or a registry version NAME@vN / NAME@ALIAS")
    parser.add_argument("b", help="version B, as A")
    parser.add_argument("--spec", default=None, help="spec JSON for model files that carry none (both use it)")
    parser.add_argument("--inputs", required=True, help="inputs both versions run on: .npy/.npz or a raw file the spec reads")
    parser.add_argument("--method", required=True, help="attribution method (see `python -m explain methods MODEL`)")
    add_method_arguments(parser)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.attribute import method_params
    from explain.cli.model_arg import load_inputs_arg
    from explain.cli.out_file import replace_atomically
    from explain.cli.workspace_arg import cli_actor, cli_workspace
    from explain.compare.job import JOB_KIND, compare_job, saved_comparison, version_logs
    from explain.config import external_worker
    from explain.output.methods import get_method
    from explain.service.client import finished_run, run_here, submit, wait
    from explain.service.models import shared_models

    ws, actor = cli_workspace(), cli_actor()
    method = get_method(args.method)
    info_a, model_a = version_arg(ws, actor, args.a, args.spec, args.inputs)
    info_b, model_b = version_arg(ws, actor, args.b, args.spec, args.inputs)
    inputs = load_inputs_arg(args.inputs, model_a)
    params = method_params(method, args, model_a)
    logs = (version_logs(ws, actor, info_a), version_logs(ws, actor, info_b))
    job_params, arrays, title = compare_job(model_a, model_b, info_a.ref, info_b.ref, inputs, method.name, params,
                                            sizes=(info_a.size, info_b.size), logs=logs)
    job = submit(ws, actor, JOB_KIND, job_params, title=title, inputs=arrays, priority="interactive")
    shared_models().add(model_b)  # the job runs on the copies loaded here (A is `run_here`'s)
    job = wait(ws, actor, job.id) if external_worker() else run_here(ws, job.id, loaded=model_a)
    run = finished_run(ws, actor, job)
    result = {**saved_comparison(run).to_dict(), "run": run.info.id}
    if args.out:
        from explain.jsonable import to_json_safe

        out = Path(args.out)
        with replace_atomically(out) as tmp:
            Path(tmp).write_text(json.dumps(to_json_safe(result), allow_nan=False), encoding="utf-8")
        result["out"] = str(out)
    return result


def version_arg(ws, actor, arg: str, spec_path: str | None, inputs_path: str | None):
    """(`VersionInfo`, `LoadedModel`) of a version argument: a file or sample (loaded as every
    subcommand loads one, `load_model_arg`, and registered), else a registry reference.

    Raises:
        UsageError: neither a file, a sample nor a reference; NotFound: no such version.
    """
    import sample_models
    from explain.cli.model_arg import load_model_arg, model_file_arg
    from explain.errors import UsageError
    from explain.service.client import model_name_from_file, register_model
    from explain.service.models import ModelCache

    if Path(arg).exists() or arg in sample_models.SAMPLE_NAMES:
        model = load_model_arg(arg, spec_path, inputs_path)
        data, filename = model_file_arg(arg)
        sample = arg in sample_models.SAMPLE_NAMES and not Path(arg).exists()
        return register_model(ws, actor, model, data, filename,
                              arg if sample else model_name_from_file(Path(arg).name)), model
    if "@" not in arg:
        raise UsageError(f"No such model file: {arg}.", "Give a model file, or a registry version NAME@vN or NAME@ALIAS.")
    info = ws.registry.resolve(actor, arg)
    return info, ModelCache(ws).load(actor, info)

