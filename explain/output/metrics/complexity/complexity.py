"""Complexity (Bhatt et al. 2020), as Quantus's `Complexity` with its defaults: the entropy of
the absolute map as a distribution over features, -Σ p log(p + 1e-12), p = |a| / Σ|a|.
0 for a single feature, log(P) for a uniform map; lower is simpler.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import feature_map
from explain.output.metrics.complexity.sparseness import normalised_abs


def entropy(maps: np.ndarray) -> np.ndarray:
    """[N] entropy of non-negative [N, P] rows taken as distributions (natural log)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = maps / maps.sum(axis=1, keepdims=True)
    return -(p * np.log(p + 1e-12)).sum(axis=1)


@register
class Complexity(Metric):
    name = "complexity"
    category = "complexity"
    title = "Complexity"
    summary = "Entropy of |map| over the features: 0 when one feature holds everything; lower is simpler."
    higher_is_better: ClassVar[bool] = False
    params: dict = {}

    def _evaluate(self, subject: Subject, progress, **_: Any) -> MetricResult:
        return self.result(subject, entropy(normalised_abs(feature_map(subject.model, subject.attribution.values))))
