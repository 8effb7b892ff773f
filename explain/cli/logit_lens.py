"""The logit lens of a causal LM: the top-k next tokens each layer would predict per position; write L.npz.

``python -m explain logit-lens MODEL --prompts P.txt [--top-k K] --out L.npz``

L.npz holds ``top_ids`` and ``top_probs`` [N, layers + 1, L, k] (index 0: the embeddings; the last:
the model's own prediction; -1 / 0 past a prompt's end) and ``lengths`` [N]. stdout JSON: ``layers``
(the number of layers + 1), ``shape``, ``top_tokens`` (the last layer's first choice at each
prompt's last position), ``notes``, ``out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from explain.cli.model_arg import load_model_arg
from explain.cli.out_file import replace_atomically

NAME = "logit-lens"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a causal LM: Hugging Face folder or zip whose config.json names a *ForCausalLM")
    parser.add_argument("--spec", default=None, help="spec JSON for models that carry none")
    parser.add_argument("--prompts", required=True, help="prompts: .txt (one per line) or .npy/.npz token ids [N, L]")
    parser.add_argument("--top-k", type=int, default=5, help="tokens listed per layer and position (default 5)")
    parser.add_argument("--out", required=True, help="output .npz")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from explain.generation.causal_lm import require_causal_lm
    from explain.generation.logit_lens import logit_lens
    from explain.generation.prompts import read_token_lists, token_strings

    model = load_model_arg(args.model, args.spec)
    require_causal_lm(model, "logit-lens")
    prompts = read_token_lists(args.prompts, model.spec)
    lens = logit_lens(model, prompts, args.top_k)
    out = Path(args.out)
    with replace_atomically(out) as tmp:
        np.savez_compressed(tmp, top_ids=lens.top_ids, top_probs=lens.top_probs, lengths=lens.lengths)
    last = [int(lens.top_ids[i, -1, n - 1, 0]) for i, n in enumerate(lens.lengths)]
    return {"layers": int(lens.top_ids.shape[1]), "shape": list(lens.top_ids.shape),
            "top_tokens": token_strings(last, model.spec), "notes": list(lens.notes), "out": str(out)}
