"""Numbers derived from attention maps: head summary, rollout, pooling, token labels.

All functions take arrays shaped like ``AttentionMaps.weights``
([layer, batch, head, query, key]) or slices of it and return new arrays; no
model is run here.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from explain.inputs.text import display_tokens, padding_mask
from explain.spec import InputSpec

#: sequences longer than this are pooled before they are drawn.
MAX_DRAWN_TOKENS = 128


def label_tokens(spec: InputSpec, ids: np.ndarray) -> list[str]:
    """Readable token labels for one row of ids (`display_tokens`: ``great`` for ``Ġgreat``).

    Repeated tokens stay distinguishable on an axis: ``the``, ``the·2``.
    """
    out, seen = [], {}
    for tok in display_tokens(np.asarray(ids).ravel(), spec):
        seen[tok] = seen.get(tok, 0) + 1
        out.append(tok if seen[tok] == 1 else f"{tok}·{seen[tok]}")
    return out


def summarise_heads(weights: np.ndarray, layer_names: list[str], lengths: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per (layer, head), averaged over inputs and their real query positions.

    Args:
        weights: [layer, batch, head, query, key].
        layer_names: one per layer.
        lengths: [batch] real (unpadded) lengths; padding queries are ignored.

    Returns:
        rows ``{layer, head, entropy, normalised_entropy, max_weight, first_token_weight}``:
        entropy in nats of each query's distribution (0 = one key; log(n) =
        uniform), normalised by log(number of real keys); max_weight = the
        largest weight in a row; first_token_weight = weight on key 0
        (``<cls>`` / attention sink).
    """
    n_layers, n_batch, n_heads, n_q, n_k = weights.shape
    lengths = np.full(n_batch, n_q) if lengths is None else np.asarray(lengths)
    p = np.clip(weights.astype(np.float64), 1e-12, 1.0)
    ent = -(weights * np.log(p)).sum(-1)  # [L, B, H, Q]
    mx = weights.max(-1)  # [L, B, H, Q]
    first = weights[..., 0]  # [L, B, H, Q]
    qmask = np.arange(n_q)[None, :] < lengths[:, None]  # [B, Q]
    w = qmask[None, :, None, :].astype(np.float64)
    denom = np.maximum(w.sum(axis=(1, 3)), 1)  # [1, H?] -> broadcast below
    log_n = np.log(np.maximum(lengths, 2))[None, :, None, None]  # [1, B, 1, 1]

    def avg(a: np.ndarray) -> np.ndarray:  # [L, B, H, Q] -> [L, H]
        return (a * w).sum(axis=(1, 3)) / denom

    e, ne, m, f = avg(ent), avg(ent / log_n), avg(mx), avg(first)
    return [
        {"layer": layer_names[li], "head": h, "entropy": float(e[li, h]), "normalised_entropy": float(ne[li, h]),
         "max_weight": float(m[li, h]), "first_token_weight": float(f[li, h])}
        for li in range(n_layers) for h in range(n_heads)
    ]


def compute_rollout(weights: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) across all layers.

    Each layer's head-mean attention is mixed with the identity for the
    residual connection, rows renormalised, and the layers multiplied from
    the first to the last.

    Args:
        weights: [layer, batch, head, query, key] with query == key.
        residual: weight of the identity (0.5 in the paper).

    Returns:
        [batch, query, key]: how much each input token flows into each position.
    """
    n_layers, n_batch, _, n_q, n_k = weights.shape
    if n_q != n_k:
        raise ValueError("Rollout needs self-attention (as many queries as keys).")
    eye = np.eye(n_q)[None]
    out = np.broadcast_to(eye, (n_batch, n_q, n_k)).copy()
    for layer in range(n_layers):
        a = weights[layer].astype(np.float64).mean(axis=1)  # [B, Q, K]
        a = residual * eye + (1 - residual) * a
        a = a / np.maximum(a.sum(-1, keepdims=True), 1e-12)
        out = a @ out
    return out


def pool_attention(matrix: np.ndarray, labels: list[str], max_tokens: int = MAX_DRAWN_TOKENS) -> tuple[np.ndarray, list[str]]:
    """Shrink a [..., query, key] map to at most ``max_tokens`` per axis for drawing.

    Consecutive positions are grouped into blocks; a block of keys gets the
    sum of their weights (rows still sum to 1), a block of queries the mean.

    Returns:
        (pooled [..., q', k'], labels of the blocks: ``tok`` or ``tok…tok (n)``).
    """
    n = matrix.shape[-1]
    if n <= max_tokens and matrix.shape[-2] <= max_tokens:
        return matrix, list(labels)
    block = math.ceil(max(n, matrix.shape[-2]) / max_tokens)
    pooled = _pool_axis(matrix, -1, block, "sum")
    pooled = _pool_axis(pooled, -2, block, "mean")
    groups = [labels[i : i + block] for i in range(0, len(labels), block)]
    names = [g[0] if len(g) == 1 else f"{g[0]}…{g[-1]} ({len(g)})" for g in groups]
    return pooled, names


def _pool_axis(a: np.ndarray, axis: int, block: int, how: str) -> np.ndarray:
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    pad = (-n) % block
    padded = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1) if pad else a
    blocks = padded.reshape(a.shape[:-1] + (-1, block))
    out = blocks.sum(-1)
    if how == "mean":
        sizes = np.full(out.shape[-1], block, dtype=np.float64)
        if pad:
            sizes[-1] = block - pad
        out = out / sizes
    return np.moveaxis(out, -1, axis)


def attention_to_tokens(weights: np.ndarray, ids: np.ndarray, token_ids: set[int], query: int = 0) -> tuple[float, float]:
    """Mean attention a query position pays per key inside vs outside ``token_ids``.

    Args:
        weights: [batch, query, key] (one layer's head-mean, or a rollout).
        ids: [batch, key] token ids; padding keys (`explain.inputs.text.padding_mask`) are ignored.
        token_ids: the ids of interest (e.g. sentiment words).
        query: the query position (0 = ``<cls>``).

    Returns:
        (mean weight per key on the chosen tokens, mean weight per key on the
        other real tokens other than the query itself), over inputs that have both.
    """
    inside, outside = [], []
    for b in range(weights.shape[0]):
        row = weights[b, query]
        real = ~padding_mask(ids[b])
        real[query] = False
        chosen = real & np.isin(ids[b], list(token_ids))
        other = real & ~chosen
        if chosen.any() and other.any():
            inside.append(row[chosen].mean())
            outside.append(row[other].mean())
    if not inside:
        return float("nan"), float("nan")
    return float(np.mean(inside)), float(np.mean(outside))
