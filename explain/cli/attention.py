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

from explain.cli.model_arg import load_inputs_arg, load_model_arg
from explain.cli.out_file import replace_atomically

NAME = "attention"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (safetensors, .pt, TorchScript, .pt2) or a sample name")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--inputs", required=True, help="inputs: .npy/.npz token ids, or .txt when the spec has a vocabulary; a folder of such files is read in name order")
    parser.add_argument("--out", required=True, help="output .npz")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from explain.structure.attention import capture_attention

    model = load_model_arg(args.model, args.spec, args.inputs)
    inputs = load_inputs_arg(args.inputs, model)
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
