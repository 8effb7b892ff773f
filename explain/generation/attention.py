"""Attention per layer and head of a causal LM's prompts, as transformers returns it.

The prompts are padded on the right to the longest, with an attention mask that hides
the padding, and run once with ``output_attentions=True`` (the model is built with eager
attention, which returns them): [layer, N, head, L, L], each real query's row summing to
1 over the keys up to it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explain.generation.causal_lm import causal_lm, check_lengths, device_of
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.structure.attention import AttentionMaps


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
