"""Relevance mass accuracy (Arras et al. 2022), as Quantus's `RelevanceMassAccuracy` with its
defaults: the share of the map's total that lies inside the ground-truth mask,
Σ(a · mask) / Σ a (NaN for an empty mask). Signed map (Quantus's ``abs=False``);
``absolute`` uses |value|, which keeps the share in [0, 1].
"""
from __future__ import annotations

from typing import Any

import numpy as np

from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import feature_map
from explain.output.metrics.localisation.pointing_game import ABSOLUTE_PARAM


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[N] Σ(a · mask) / Σ a from feature maps [N, ...] and bool masks of the same shape."""
    n = len(maps)
    a, s = maps.reshape(n, -1), masks.reshape(n, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (a * s).sum(axis=1) / a.sum(axis=1)
    share[s.sum(axis=1) == 0] = np.nan
    return share


@register
class RelevanceMass(Metric):
    name = "relevance_mass"
    category = "localisation"
    title = "Relevance mass"
    summary = "Share of the map's total inside the object (ground-truth mask); higher is better."
    needs_masks = True
    params = {"absolute": ABSOLUTE_PARAM}

    def _evaluate(self, subject: Subject, progress, absolute: bool, **_: Any) -> MetricResult:
        maps = feature_map(subject.model, subject.attribution.values)
        maps = np.abs(maps) if absolute else maps
        return self.result(subject, mass_inside(maps, subject.masks), params={"absolute": absolute})
