"""Sufficiency (ERASER, DeYoung et al. 2020), as ferret's AOPC: keep only the rationale (the top-k%
features, positive scores only, k = 10, ..., 100), replace the rest with the substrate, and average
the drop of the target's probability, p(x) - p(rationale only), over the valid thresholds. Lower is
better: the rationale alone keeps the answer. The same grid and rule as
`explain.output.metrics.faithfulness.comprehensiveness`.
"""
from __future__ import annotations

from typing import ClassVar

from explain.output.metrics.base import register
from explain.output.metrics.faithfulness.comprehensiveness import Comprehensiveness


@register
class Sufficiency(Comprehensiveness):
    name = "sufficiency"
    title = "Sufficiency (AOPC)"
    summary = ("Mean drop of the target's probability when only the top 10%, 20%, ..., 100% of the "
               "features (positive scores only) are kept; lower is better (ERASER, as ferret computes it).")
    higher_is_better: ClassVar[bool] = False
    keep: ClassVar[bool] = True
