"""Attention weights per layer and head; write OUT.npz.

``python -m explain attention MODEL --inputs F --out OUT.npz``

OUT.npz holds ``attention`` [layer, batch, head, query, key] (float32) and
``layer_names``; stdout JSON has ``layers``, ``heads``, ``tokens`` (counts),
``layer_names``, ``source`` and ``shape``. Exit 3 with a one-line reason when
the model has no attention its format lets us read.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from explain.cli.out_file import replace_atomically
from explain.errors import UsageError

NAME = "attention"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (safetensors, .pt, TorchScript, .pt2) or a sample name")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", required=True, help="inputs: .npy/.npz token ids, or .txt when the spec has a vocabulary")
    parser.add_argument("--out", required=True, help="output .npz")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from explain.structure.attention import capture_attention

    model = _load_model(args.model, args.spec)
    inputs = _read_inputs(args.inputs, model)
    maps = capture_attention(model, inputs)
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        np.savez_compressed(tmp, attention=maps.weights.astype(np.float32),
                            layer_names=np.asarray(maps.layer_names, dtype=str))
    return {
        "layers": maps.num_layers,
        "heads": maps.num_heads,
        "tokens": maps.num_tokens,
        "batch": int(maps.weights.shape[1]),
        "layer_names": list(maps.layer_names),
        "source": maps.source,
        "shape": list(maps.weights.shape),
        "notes": list(maps.notes),
        "out": str(out),
    }


def _load_model(path: str, spec_path: str | None):
    from explain.loading.loader import load_model

    if not Path(path).exists():
        try:
            import sample_models
        except ImportError:  # pragma: no cover
            sample_models = None
        if sample_models is not None and path in getattr(sample_models, "SAMPLE_NAMES", ()):
            return sample_models.load_sample(path)
        raise UsageError(f"No such model file: {path}.")
    if spec_path and not Path(spec_path).exists():
        raise UsageError(f"No such spec file: {spec_path}.")
    return load_model(path, spec=spec_path)


def _read_inputs(path: str, model) -> np.ndarray:
    from explain.inputs.reading import read_inputs

    if not Path(path).exists():
        raise UsageError(f"No such inputs file: {path}.")
    return read_inputs(path, model.spec).array
