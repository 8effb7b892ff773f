"""Pointing game (Zhang et al. 2018), as Quantus's `PointingGame` with its defaults: 1 when a
feature holding the map's largest value lies in the ground-truth mask, else 0 (NaN for an
empty mask). Signed map (Quantus's ``abs=False``); ``absolute`` ranks by |value|.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import feature_map
from explain.params import ParamSpec

ABSOLUTE_PARAM = ParamSpec("bool", False, help="Use |value| (Quantus's default: the signed map).")


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[N] 1.0 / 0.0 / NaN from feature maps [N, ...] and bool masks of the same shape."""
    n = len(maps)
    a, s = maps.reshape(n, -1), masks.reshape(n, -1)
    top = a == a.max(axis=1, keepdims=True)
    hit = np.any(s & top, axis=1).astype(np.float64)
    hit[s.sum(axis=1) == 0] = np.nan
    return hit


@register
class PointingGame(Metric):
    name = "pointing_game"
    category = "localisation"
    title = "Pointing game"
    summary = "1 when the map's peak lies on the object (ground-truth mask), else 0; higher is better."
    needs_masks = True
    params = {"absolute": ABSOLUTE_PARAM}

    def _evaluate(self, subject: Subject, progress, absolute: bool, **_: Any) -> MetricResult:
        maps = feature_map(subject.model, subject.attribution.values)
        maps = np.abs(maps) if absolute else maps
        return self.result(subject, pointing_hits(maps, subject.masks), params={"absolute": absolute})
