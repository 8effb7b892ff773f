"""Attention weights per layer and head; write OUT.npz.

``python -m explain attention MODEL --inputs F --out OUT.npz``
``python -m explain attention CAUSAL_LM --prompts P.txt --out OUT.npz`` (prompts padded on the right to
the longest, padding masked: `explain.generation.attention`)

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
    parser.add_argument("--prompts", default=None, help="a causal LM's prompts: .txt (one per line) or .npy/.npz token ids")
    parser.add_argument("--inputs", default=None, help="inputs: .npy/.npz token ids, or .txt when the spec has a vocabulary; a folder of such files is read in name order")
    parser.add_argument("--out", required=True, help="output .npz")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from explain.errors import UsageError
    from explain.structure.attention import capture_attention

    if (args.inputs is None) == (args.prompts is None):
        raise UsageError("Give --inputs (any text or image model) or --prompts (a causal LM), one of them.")
    model = load_model_arg(args.model, args.spec, args.inputs)
    if args.prompts is not None or model.spec.is_causal_lm:
        maps = _causal_attention(model, args.prompts or args.inputs)
    else:
        maps = capture_attention(model, load_inputs_arg(args.inputs, model))
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


def _causal_attention(model, prompts_path: str):
    from explain.generation.attention import causal_attention
    from explain.generation.causal_lm import require_causal_lm
    from explain.generation.prompts import read_token_lists

    require_causal_lm(model, "attention --prompts")
    return causal_attention(model, read_token_lists(prompts_path, model.spec))
