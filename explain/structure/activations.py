"""Activation and weight statistics per layer.

Activations come from the same single forward pass as the layer table
(:func:`explain.structure.layers.build_layer_table`): per module the mean, standard
deviation, share of exact zeros and of dead units (units that are 0 for every
input and position, e.g. ReLU channels that never fire). Weights are read
from the parameters directly, so they work for every format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explain.errors import IncompatibleInput
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.structure.layers import LayerTable


def tabulate_activations(table: LayerTable, max_depth: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{name, type, depth, shape, mean, std, zero_fraction, dead_fraction}``
    for every module whose output was observed (at most ``max_depth`` deep)."""
    rows = []
    for r in table.rows:
        st = table.stats.get(r.name)
        if st is None or st.mean is None or (max_depth is not None and r.depth > max_depth):
            continue
        rows.append({
            "name": r.name or "(model)", "type": r.type, "depth": r.depth, "shape": list(st.shape),
            "mean": st.mean, "std": st.std, "zero_fraction": st.zero_fraction, "dead_fraction": st.dead_fraction,
        })
    return rows


@dataclass
class WeightStats:
    """One parameter tensor: ``module.weight`` etc.

    Attributes:
        name: qualified parameter name.
        module: owning module name.
        shape: tensor shape.
        numel: element count.
        norm: L2 (Frobenius) norm.
        rms: norm / sqrt(numel), comparable across layer sizes.
        mean, std, abs_max: over all elements.
        zero_fraction: share of exact zeros (pruned weights).
        trainable: ``requires_grad``.
    """

    name: str
    module: str
    shape: tuple[int, ...]
    numel: int
    norm: float
    rms: float
    mean: float
    std: float
    abs_max: float
    zero_fraction: float
    trainable: bool


@in_model_process
def compute_weight_stats(model: LoadedModel) -> list[WeightStats]:
    """Norm, mean, std, max and zeros of every parameter tensor (shared ones once)."""
    out, seen = [], set()
    for name, p in model.module.named_parameters():
        if id(p) in seen or p.numel() == 0:
            continue
        seen.add(id(p))
        w = p.detach().float().cpu()
        norm = float(torch.linalg.vector_norm(w))
        out.append(WeightStats(
            name=name, module=name.rsplit(".", 1)[0] if "." in name else "", shape=tuple(w.shape),
            numel=int(w.numel()), norm=norm, rms=norm / float(np.sqrt(w.numel())), mean=float(w.mean()),
            std=float(w.std(unbiased=False)), abs_max=float(w.abs().max()),
            zero_fraction=float((w == 0).float().mean()), trainable=bool(p.requires_grad),
        ))
    return out


@in_model_process
def compute_weight_histogram(model: LoadedModel, name: str, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of parameter ``name``: (counts [bins], edges [bins + 1]).

    Raises:
        IncompatibleInput: no parameter of that name.
    """
    params = dict(model.module.named_parameters())
    if name not in params:
        raise IncompatibleInput(f"The model has no parameter {name!r}.")
    values = params[name].detach().float().cpu().numpy().ravel()
    counts, edges = np.histogram(values, bins=int(bins))
    return counts, edges
