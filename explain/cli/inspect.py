"""Load a model and describe it: format, sha256, modality, input shape, parameters, classes.

``python -m explain inspect MODEL [--spec S] [--inputs F] [--layers]``
"""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from explain.cli.model_arg import load_model_arg, read_inputs_arg
from explain.inputs.reading import InputBatch
from explain.model import LoadedModel

NAME = "inspect"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file: safetensors, .pt/.pth/.ckpt, TorchScript or .pt2")
    parser.add_argument("--spec", help="spec JSON file (wins over the spec embedded in the model)")
    parser.add_argument("--inputs", help="inputs to check against the model (.npy/.npz/.png/.jpg/.csv/.txt); .npy/.npz also tell the spec of a model that carries none; a folder of such files is read in name order")
    parser.add_argument("--layers", action="store_true", help="also list layers with output shapes and FLOPs")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load ``args.model`` and return the JSON description (see the module docstring)."""
    model = load_model_arg(args.model, args.spec, args.inputs)
    result = describe_model(model)
    batch = read_inputs_arg(args.inputs, model) if args.inputs else None
    if batch is not None:
        result["inputs"] = describe_batch(batch)
    if args.layers:
        from explain.structure.layers import describe_layers  # torch's FLOP counter: only when asked

        result["layers"] = describe_layers(model, batch.array if batch is not None else zeros_batch(model))
    return result


def describe_model(model: LoadedModel) -> dict[str, Any]:
    """The JSON-ready description of a loaded model."""
    spec = model.spec
    out: dict[str, Any] = {
        "name": model.name,
        "format": model.format,
        "sha256": model.sha256,
        "modality": spec.modality,
        "input_shape": list(spec.input_shape),
        "dtype": spec.dtype,
        "parameters": model.parameter_count(),
        "class_names": list(spec.class_names),
        "fixed_batch_size": model.fixed_batch_size,
        "architecture": model.architecture,
        "device": str(model.device),
    }
    if spec.feature_names:
        out["feature_names"] = list(spec.feature_names)
    if spec.vocabulary:
        out["vocabulary_size"] = len(spec.vocabulary)
    for key in ("epoch", "spec_source", "signature"):  # signature: a .pt2's, batch first, None where dynamic
        if key in model.extra:
            out[key] = model.extra[key]
    return out


def zeros_batch(model: LoadedModel) -> np.ndarray:
    """A model-ready batch of zeros (``fixed_batch_size`` or 1 samples) to trace layers with."""
    dtype = np.int64 if model.spec.dtype.startswith("int") else np.float32
    return np.zeros((model.fixed_batch_size or 1, *model.spec.input_shape), dtype)


def describe_batch(batch: InputBatch) -> dict[str, Any]:
    """Count, shape, dtype and names of the inputs that were read."""
    return {
        "count": len(batch),
        "shape": list(batch.array.shape),
        "dtype": str(batch.array.dtype),
        "has_labels": batch.labels is not None,
        "sources": batch.source_names[:20],
    }
