"""Explanations of two versions for the same target, compared per input by rank correlation.

Both versions are explained for A's predicted class with the same method and parameters; each
map is compared as shown (`explain.training.evolution.display_map`: images summed over channels),
text without its padding, by Spearman rank correlation (`explain.training.evolution.spearman`,
ties averaged) — the same measure attribution drift uses between checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.attribution import Attribution
from explain.inputs.text import padding_mask
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress
from explain.training.evolution import display_map, spearman


@dataclass
class AttributionChange:
    """A's and B's explanations of the same inputs for the same target.

    Attributes:
        a, b: the two `Attribution`s (values float32, shaped like the inputs [N, ...]).
        rank_correlation: [N] Spearman correlation of the two maps as shown (NaN where a map is constant).
    """

    a: Attribution
    b: Attribution
    rank_correlation: np.ndarray

    @property
    def mean(self) -> float | None:
        """Mean rank correlation over the inputs where it is defined (None if nowhere)."""
        finite = self.rank_correlation[np.isfinite(self.rank_correlation)]
        return float(finite.mean()) if finite.size else None


def rank_correlations(a: Attribution, b: Attribution, modality: str, spec) -> np.ndarray:
    """[N] Spearman correlation of each input's two maps as shown (text: padding left out)."""
    maps_a, maps_b = display_map(a.values, modality), display_map(b.values, modality)  # [N, ...] each
    out = np.empty(len(a), dtype=np.float64)
    for i in range(len(a)):
        keep = np.ones(maps_a.shape[1:], dtype=bool)
        if modality == "text":
            keep = ~padding_mask(np.asarray(a.inputs[i]).reshape(maps_a.shape[1:]), spec)
        out[i] = spearman(maps_a[i][keep], maps_b[i][keep])
    return out


def compare_attributions(model_a: LoadedModel, model_b: LoadedModel, inputs: np.ndarray, method: str,
                         params: dict[str, Any] | None = None, target: np.ndarray | None = None,
                         progress: ProgressFn | None = None) -> AttributionChange:
    """Explain ``inputs`` [N, ...] with both versions for ``target`` [N] (default: A's predicted
    class) and compare the maps; ``progress`` covers both (A's half, then B's)."""
    from explain.output.methods import get_method

    explainer = get_method(method)
    if target is None:
        target = model_a.predict_logits(inputs).argmax(axis=1)  # [N]
    target = np.asarray(target, dtype=np.int64)
    results = []
    for k, model in enumerate((model_a, model_b)):
        def half(done: int, total: int, k: int = k) -> None:
            report_progress(progress, k * 1000 + round(1000 * done / max(total, 1)), 2000)

        attr = explainer.explain(model, inputs, target=target, progress=half, **dict(params or {}))
        attr.values = np.asarray(attr.values, dtype=np.float32)  # a half-precision model's maps, in float32
        results.append(attr)
    a, b = results
    return AttributionChange(a, b, rank_correlations(a, b, model_a.spec.modality, model_a.spec))
