"""Faithfulness correlation (Bhatt et al. 2020): replace random subsets of features with a
substrate; the Pearson correlation, over ``runs`` subsets, between the map's sum on the
subset and the drop of the target logit, f(x) - f(x with the subset replaced). 1 for a
map that adds up like the model (input x gradient of a linear model with a zero baseline).

The random attribution is scored on the same forward passes (N x runs rows, one grid).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from explain.output.methods.common import BATCH_PARAM, DEVICE_PARAM
from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import (
    SUBSTRATES,
    Grid,
    expand_mask,
    feature_map,
    input_seed,
    pearson,
    random_like,
)
from explain.output.metrics.common import (
    substrate as substrate_of,
)
from explain.params import ParamSpec


def random_subsets(inputs: np.ndarray, n_features: int, runs: int, size: int, seed: int) -> np.ndarray:
    """bool [N, runs, P]: ``runs`` random subsets of ``size`` features per input, seeded by its content."""
    out = np.zeros((len(inputs), runs, n_features), dtype=bool)
    for i in range(len(inputs)):
        rng = np.random.default_rng(input_seed(inputs[i], seed))
        for r in range(runs):
            out[i, r, rng.choice(n_features, size, replace=False)] = True
    return out


@register
class FaithfulnessCorrelation(Metric):
    name = "faithfulness_correlation"
    category = "faithfulness"
    title = "Faithfulness correlation"
    summary = ("Correlation between the map's total on random feature subsets and the logit drop when "
               "they are removed; 1 is best, 0 is chance.")
    params = {
        "runs": ParamSpec("int", 100, minimum=3, maximum=10000, help="Random subsets per input."),
        "subset": ParamSpec("float", 0.1, minimum=0.0, maximum=1.0,
                            help="Fraction of the features in each subset (at least one)."),
        "substrate": ParamSpec("choice", "zero", choices=SUBSTRATES,
                               help="What a removed feature becomes: auto = blurred image, zeros (tabular); text: padding."),
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Seed of the subsets and the random map."),
        "device": DEVICE_PARAM,
        "batch_size": BATCH_PARAM,
    }

    def _evaluate(self, subject: Subject, progress, runs: int, subset: float, substrate: str, seed: int,
                  device: str, batch_size: int, **_: Any) -> MetricResult:
        attr = subject.attribution
        maps = feature_map(subject.model, attr.values)
        n = len(maps)
        flat = maps.reshape(n, -1)  # [N, P]
        rand = feature_map(subject.model, random_like(attr.values, attr.inputs, seed)).reshape(n, -1)
        p = flat.shape[1]
        size = min(p, max(1, int(round(subset * p))))
        subsets = random_subsets(attr.inputs, p, runs, size, seed)  # [N, S, P]
        grid = Grid(subject.model, attr.inputs, attr.target, device, batch_size, progress)
        sub = grid.tensor(substrate_of(grid.model, attr.inputs, substrate))  # [N, ...]
        masks = torch.as_tensor(subsets, device=grid.device)
        feature_shape = maps.shape[1:]

        def make_row(rows: torch.Tensor):
            i, s = rows // runs, rows % runs
            mask = expand_mask(grid.model, masks[i, s].view(-1, *feature_shape))
            return torch.where(mask, sub[i], grid.x[i]), i

        perturbed = grid.scores(n * runs, make_row).reshape(n, runs)
        drop = grid.outputs()[:, None] - perturbed  # [N, S]
        own = np.einsum("nsp,np->ns", subsets, flat)  # [N, S] map totals on each subset
        chance = np.einsum("nsp,np->ns", subsets, rand)
        params = {"runs": runs, "subset": subset, "substrate": substrate, "seed": seed}
        return self.result(subject, pearson(own, drop), random_baseline=pearson(chance, drop), params=params)


