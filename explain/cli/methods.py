"""List the attribution methods compatible with a model, with their parameters."""
from __future__ import annotations

import argparse

NAME = "methods"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (or a sample name: shapes, cancer, sentiment)")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", default=None,
                        help="model-ready .npy/.npz arrays: tell the spec of a model that carries none")
    parser.add_argument("--all", action="store_true", help="also list incompatible methods, with the reason")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.model_arg import load_model_arg
    from explain.output.methods import all_methods

    model = load_model_arg(args.model, args.spec, args.inputs)
    listed, refused = [], []
    for method in all_methods():
        reason = method.incompatibility(model)
        if reason is None:
            listed.append({
                "name": method.name,
                "family": method.family,
                "title": method.title,
                "params": {k: spec.to_dict() for k, spec in method.params.items()},
            })
        else:
            refused.append({"name": method.name, "reason": reason})
    result = {"methods": listed, "modality": model.modality, "format": model.format}
    if args.all:
        result["incompatible"] = refused
    return result
