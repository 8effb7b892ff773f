"""Insertion (Petsiuk et al. 2018, RISE): start from the substrate (blurred, zero or mean
image; padding for text) and put the input's features back in attribution order, largest
first; the area under the target's score (higher is better). The same batched grid as
deletion (`explain.output.metrics.faithfulness.deletion.perturbation_curves`).
"""
from __future__ import annotations

from typing import ClassVar

from explain.output.metrics.base import register
from explain.output.metrics.faithfulness.deletion import Deletion


@register
class Insertion(Deletion):
    name = "insertion"
    title = "Insertion AUC"
    summary = ("Area under the target's score as the most important features are added first to an "
               "empty input; higher is better (the model finds its answer fast).")
    higher_is_better: ClassVar[bool] = True
    insert: ClassVar[bool] = True
