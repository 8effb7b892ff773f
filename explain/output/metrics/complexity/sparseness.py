"""Sparseness (Chalasani et al. 2020), as Quantus's `Sparseness` with its defaults: the Gini
index of the absolute map, each input's map scaled to a maximum of 1 and shifted by 1e-7
(Quantus scales by the batch's maximum; per input keeps a result independent of its batch).
1 for a single feature, 0 for a uniform map; higher is sparser.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import feature_map


def normalised_abs(maps: np.ndarray) -> np.ndarray:
    """[N, P] |map| / max |map| per input (an all-zero map stays zero)."""
    a = np.abs(maps.reshape(len(maps), -1))
    peak = a.max(axis=1, keepdims=True)
    return a / np.where(peak > 0, peak, 1.0)


def gini(maps: np.ndarray) -> np.ndarray:
    """[N] Gini index of non-negative [N, P] rows (Quantus's formula, with its 1e-7 shift)."""
    a = np.sort(maps + 1e-7, axis=1)
    p = a.shape[1]
    k = np.arange(1, p + 1)[None]
    return ((2 * k - p - 1) * a).sum(axis=1) / (p * a.sum(axis=1))


@register
class Sparseness(Metric):
    name = "sparseness"
    category = "complexity"
    title = "Sparseness"
    summary = "Gini index of |map|: 1 when one feature holds everything, 0 when all share equally."
    params: dict = {}

    def _evaluate(self, subject: Subject, progress, **_: Any) -> MetricResult:
        return self.result(subject, gini(normalised_abs(feature_map(subject.model, subject.attribution.values))))
