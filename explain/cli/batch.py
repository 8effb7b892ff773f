"""Explain a whole dataset shard by shard, locally or on a Ray cluster, as a batch job of the
workspace's queue (saved as a run, its id printed as ``run``); write RUN.npz.

``--inputs`` is a ``.npz`` / ``.npy`` / ``.csv`` / ``.txt`` file, a folder of images or a
zip of them. RUN.npz (written whole or not at all) holds, in dataset order: ``values``
(the attributions), ``targets``, ``predictions``, ``probabilities``,
``completeness_error``, ``base_value``, ``output``, ``rows``, ``item_names``, ``labels``
(when the data carried them), and the global summaries ``summary_mean_abs``,
``summary_class_counts``, ``summary_class_means`` (and ``summary_top_tokens`` /
``summary_top_token_totals`` for text). On stdout: ``method``, ``engine``, ``rows``,
``shards``, ``seconds``, ``attributions_per_s``, ``max_completeness_error``, ``params``,
``shape``, ``summary`` (`explain.dataset.summary.summary_dict`) and ``out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from explain import config
from explain.cli.attribute import add_method_arguments, method_params
from explain.cli.model_arg import load_model_arg
from explain.cli.out_file import replace_atomically
from explain.dataset.reading import DEFAULT_SHARD_ROWS
from explain.errors import UsageError

NAME = "batch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (or a sample name: shapes, cancer, sentiment)")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", required=True,
                        help="the dataset: .npz/.npy, .csv, .txt (one text per line), a folder of images or a zip of them")
    parser.add_argument("--method", required=True, help="method name (see `python -m explain methods MODEL`)")
    parser.add_argument("--target", default=None,
                        help="class to explain: an index, 'label' (each row's label) or nothing for the predicted class")
    add_method_arguments(parser)
    parser.add_argument("--engine", choices=("local", "ray"), default=None,
                        help="where shards run (default: ray when GLASSBOX_RAY_ADDRESS is set, else local)")
    parser.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help="rows per shard")
    parser.add_argument("--actors", type=int, default=None, help="ray: actors (default one per GPU, else per CPU)")
    parser.add_argument("--out", required=True, help="output RUN.npz")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.job_arg import run_as_job
    from explain.dataset.job import dataset_job
    from explain.dataset.reading import read_dataset
    from explain.output.methods import get_method

    if args.shard_rows < 1:
        raise UsageError("--shard-rows must be at least 1.")
    method = get_method(args.method)
    if not Path(args.inputs).exists():
        raise UsageError(f"No such inputs file or folder: {args.inputs}.")
    spec_inputs = args.inputs if Path(args.inputs).is_file() else None  # a folder cannot tell a spec
    model = load_model_arg(args.model, args.spec, spec_inputs)
    dataset = read_dataset(args.inputs, model.spec)
    params = method_params(method, args, model)
    engine_name = args.engine or ("ray" if config.ray_address() else "local")
    run = run_as_job(args.model, model, "dataset", lambda name, version: dataset_job(
        model, name, version, dataset, method.name, params, _target(args.target), args.shard_rows, engine_name,
        args.actors), priority="batch")
    arrays = run.results
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        np.savez_compressed(tmp, **arrays)
    info = run.info
    return {
        "method": method.name,
        "engine": engine_name,
        **{k: info.summary[k] for k in ("rows", "shards", "seconds", "attributions_per_s", "max_completeness_error")},
        "device": info.environment.get("device"),
        "params": info.params.get(method.name, {}),
        "shape": list(arrays["values"].shape),
        "summary": info.summary["summary"],
        "out": str(out),
        "run": info.id,
    }


def _target(value: str | None) -> int | str | None:
    if value is None or value == "label":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--target wants a class index or 'label', got {value!r}.") from None
