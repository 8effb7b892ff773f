"""Write a one-file HTML report: model card, explanations, their quality, structure, training, environment;
built as a job of the workspace's queue and saved as a run (its id printed as ``run``)."""
from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from explain.cli.out_file import replace_atomically
from explain.errors import UsageError

NAME = "report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (or a sample name: shapes, cancer, sentiment)")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", default=None, help="inputs to explain: .npy/.npz or a raw file the spec can read")
    parser.add_argument("--logs", nargs="+", default=[], metavar="LOG", help="training logs (csv, json, TensorBoard)")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="CKPT",
                        help="checkpoints: weights-only torch.save files, safetensors, TorchScript, Hugging Face model folders or "
                             "zips (ordered by their epoch; 2 or more add a checkpoint-evolution section)")
    parser.add_argument("--methods", default="integrated_gradients", help="comma-separated attribution methods")
    parser.add_argument("--max-inputs", type=int, default=4, help="how many inputs the output sections explain")
    parser.add_argument("--steps", type=int, default=None, help="integration steps / samples for every method that has them")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                        help="a method parameter, e.g. integrated_gradients.baseline=mean")
    parser.add_argument("--metrics", default=None,
                        help="quality metrics of the Quality section, comma-separated, or 'none' "
                             "(default: the cheap ones the model and --masks allow)")
    parser.add_argument("--masks", default=None, help="ground-truth masks of --inputs (.npy / .npz 'masks')")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--comparison", default=None, metavar="RUN",
                        help="a saved comparison run (`python -m explain compare`) to add as a Compare section")
    parser.add_argument("--generation", default=None, metavar="RUN",
                        help="a saved generation run (a generate job: the Generate page's Save as a run, the API's "
                             ":generate) to add as a Generation section")
    parser.add_argument("--pdf", default=None, help="also print the report to this PDF (needs Chromium)")
    parser.add_argument("--out", required=True, help="output .html")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.job_arg import run_as_job
    from explain.cli.model_arg import load_model_arg, read_inputs_arg
    from explain.output.methods import get_method
    from explain.report.document import print_pdf
    from explain.report.job import log_as_data, report_html, report_job

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UsageError("--methods names no method.")
    method_params = {m: _method_params(get_method(m), args.steps) for m in methods}
    _apply_params(method_params, args.param)
    for path in [*args.logs, *args.checkpoints]:
        if not Path(path).exists():
            raise UsageError(f"No such file: {path}.")
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must end in .html, got {out.name}.")

    quality = None
    if args.metrics is not None:
        from explain.output.metrics import get_metric

        quality = [] if args.metrics.strip() == "none" else [m.strip() for m in args.metrics.split(",") if m.strip()]
        for name in quality:
            get_metric(name)  # unknown names: exit 2 before any work
    masks = None
    if args.masks:
        from explain.cli.evaluate import read_masks

        masks = read_masks(args.masks)

    model = load_model_arg(args.model, args.spec, args.inputs)
    inputs = read_inputs_arg(args.inputs, model) if args.inputs else None  # labels kept, as the page has them
    logs = [log_as_data(p) for p in args.logs]
    checkpoints = [checkpoint_as_data(p) for p in args.checkpoints]
    comparison = generation = None
    if args.comparison or args.generation:
        from explain.cli.workspace_arg import cli_actor, cli_workspace

        ws, actor = cli_workspace(), cli_actor()
        comparison = ws.runs.open(actor, args.comparison) if args.comparison else None
        generation = ws.runs.open(actor, args.generation) if args.generation else None
    start = time.perf_counter()
    run = run_as_job(args.model, model, "report", lambda name, version: report_job(
        model, name, version, None if inputs is None else inputs.array,
        labels=None if inputs is None else inputs.labels, logs=logs, checkpoints=checkpoints, methods=methods,
        max_inputs=args.max_inputs, method_params=method_params, title=args.title,
        invocation={"command": _command(args)}, quality=quality, masks=masks, comparison=comparison,
        generation=generation))
    html = report_html(run)
    with replace_atomically(out) as tmp:
        Path(tmp).write_bytes(html)
    pdf = None
    if args.pdf:
        with replace_atomically(args.pdf) as tmp:
            print_pdf(html.decode("utf-8"), tmp)
        pdf = str(Path(args.pdf).resolve())
    path = out
    return {
        "out": str(path),
        "sections": run.info.summary["sections"],
        "failed": run.info.summary["failed"],
        "bytes": path.stat().st_size,
        "pdf": pdf,
        "model_sha256": model.sha256,
        "methods": methods,
        "seconds": time.perf_counter() - start,
        "run": run.info.id,
    }


def checkpoint_as_data(path: str) -> tuple[str, bytes]:
    """A checkpoint as the job carries it: ``(name, bytes)``; a Hugging Face folder packed as its zip
    (``NAME.zip``: the files `load_model` reads and a Trainer's ``trainer_state.json``), so the worker
    reads a folder and a zip alike."""
    from explain.report.job import file_as_data
    from explain.training.checkpoints import checkpoint_folder_as_zip

    if Path(path).is_dir():
        data, name = checkpoint_folder_as_zip(path)
        return name, data
    return file_as_data(path)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this report (from the parsed arguments)."""
    parts = ["python", "-m", "explain", NAME, args.model]
    for flag, value in (("--spec", args.spec), ("--inputs", args.inputs), ("--title", args.title),
                        ("--metrics", args.metrics), ("--masks", args.masks)):
        if value:
            parts += [flag, value]
    if args.logs:
        parts += ["--logs", *args.logs]
    if args.checkpoints:
        parts += ["--checkpoints", *args.checkpoints]
    parts += ["--methods", args.methods, "--max-inputs", str(args.max_inputs)]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    for item in args.param:
        parts += ["--param", item]
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def _method_params(method, steps: int | None) -> dict:
    """Method parameters from the shared flags (``--steps`` goes to methods that have steps)."""
    from explain.cli.attribute import _steps_key

    if steps is None:
        return {}
    key = _steps_key(method.params)
    return {key: steps} if key in method.params else {}


def _apply_params(method_params: dict[str, dict], items: list[str]) -> None:
    """``--param METHOD.NAME=VALUE`` into ``method_params`` (methods must be among --methods)."""
    for item in items:
        target, sep, value = item.partition("=")
        method, dot, name = target.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--param wants METHOD.NAME=VALUE, got {item!r}.")
        if method not in method_params:
            raise UsageError(f"--param names method {method!r}, which is not in --methods.")
        method_params[method][name.strip().replace("-", "_")] = value
