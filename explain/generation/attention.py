"""Attention per layer and head of a causal LM's prompts, as transformers returns it.

The prompts are padded on the right to the longest, with an attention mask that hides
the padding, and run once with ``output_attentions=True`` (the model is built with eager
attention, which returns them): [layer, N, head, L, L], each real query's row summing to
1 over the keys up to it.

For the selected step of a generation (generated token t, predicted at position P + t - 1),
`text_attention` reads one text's maps once (every step's query row is in them) and
`causal_rollout` rolls them out (Abnar & Zuidema: per layer the heads' mean, half identity
for the residual, rows renormalised, the layers multiplied from the first;
`explain.structure.attention_summary.compute_rollout`): a product of lower-triangular
row-stochastic matrices, so each row sums to 1 and reads no later position.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explain.errors import IncompatibleInput
from explain.generation.causal_lm import causal_lm, check_lengths, device_of
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.structure.attention import AttentionMaps
from explain.structure.attention_summary import compute_rollout


def pad_prompts(prompts: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, L], mask [N, L]): the prompts padded on the right to the longest, 1 at real tokens."""
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    for n, prompt in enumerate(prompts):
        ids[n, : len(prompt)] = prompt
        mask[n, : len(prompt)] = 1
    return ids, mask


@in_model_process
def causal_attention(model: LoadedModel, prompts: Sequence[np.ndarray]) -> AttentionMaps:
    """`AttentionMaps` of the prompts: weights [layer, N, head, L, L] and one name per layer."""
    lm = causal_lm(model)
    check_lengths(lm, prompts, [0] * len(prompts))
    ids, mask = pad_prompts(prompts)
    device = device_of(lm)
    with torch.no_grad():
        out = lm(input_ids=torch.as_tensor(ids, device=device), attention_mask=torch.as_tensor(mask, device=device),
                 use_cache=False, output_attentions=True)
    attentions = [a.float().cpu() for a in (out.attentions or ())]  # layers of [N, H, L, L]
    found = [n for n, m in lm.named_modules() if type(m).__name__.endswith("Attention")]
    names = [f"model.{n}" for n in found if not any(o.startswith(n + ".") for o in found)]  # innermost
    if len(names) != len(attentions):
        names = [f"layer {i}" for i in range(len(attentions))]
    notes = [] if len(set(map(len, prompts))) == 1 else ["prompts padded on the right to the longest; padding masked"]
    weights = torch.stack(attentions).numpy() if attentions else np.zeros((0, len(prompts), 0, ids.shape[1], ids.shape[1]))
    return AttentionMaps(weights.astype(np.float32), names, "hooks", inputs=ids, notes=notes)


def text_attention(model: LoadedModel, input_ids: np.ndarray) -> AttentionMaps:
    """The attention of one text whose every token but the last is read (prompt, then generated; the last
    generated token is never an input): weights [layer, 1, head, L, L] with L = len(input_ids) - 1."""
    ids = np.asarray(input_ids, dtype=np.int64)
    return causal_attention(model, [ids[: max(1, len(ids) - 1)]])


def causal_rollout(weights: np.ndarray, lengths: Sequence[int] | None = None) -> np.ndarray:
    """Attention rollout [N, L, L] of `causal_attention`'s weights [layer, N, head, L, L]: row q is how much
    each position j <= q flows into position q through all layers (sums to 1, 0 after q). ``lengths``: each
    prompt's real length (default: all L); the rows and columns of its right padding are 0."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape[0] == 0:
        raise IncompatibleInput("The model returned no attention weights; there is nothing to roll out.")
    rollout = compute_rollout(weights)  # [N, L, L]; a real row never reads padding, so it is exact
    n, length = rollout.shape[:2]
    real = np.arange(length)[None] < np.asarray(lengths if lengths is not None else [length] * n)[:, None]  # [N, L]
    return np.where(real[:, :, None] & real[:, None, :], rollout, 0.0)
