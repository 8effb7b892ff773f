"""Infidelity (Yeh et al. 2019), Captum's definition (`captum.metrics.infidelity`): for
random perturbations I, E[(I · a - (f(x) - f(x - I)))^2], with the target logit f. With
``normalize`` the attribution is first scaled by the best factor beta (Captum's
``normalize=True``), which makes maps of any scale comparable (and the random attribution
a fair baseline). Lower is better; 0 for the gradient of a linear model.

The perturbations are Gaussian noise of ``noise`` standard deviation, seeded per input
(its content), so the same in any batch; `perturbations` exposes them for a comparison
with Captum on the same draws. The N x samples forward passes are one grid.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from explain.output.methods.common import BATCH_PARAM, DEVICE_PARAM
from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import Grid, input_seed, random_like
from explain.params import ParamSpec


def perturbations(inputs: np.ndarray, samples: int, noise: float, seed: int) -> np.ndarray:
    """float32 [N, samples, ...]: Gaussian perturbations I per input, seeded by its content.

    The draws of ``rng.normal(0.0, noise, size)``, bit for bit (numpy computes 0.0 + noise * z from
    the same standard normals), in half its time: its per-value loc/scale path took a quarter of a
    small CNN's infidelity on a CPU."""
    out = np.empty((len(inputs), samples, *inputs.shape[1:]), dtype=np.float32)
    for i in range(len(inputs)):
        z = np.random.default_rng(input_seed(inputs[i], seed)).standard_normal(size=(samples, *inputs.shape[1:]))
        z *= noise  # [samples, ...] float64
        out[i] = z
    return out


def infidelity_from(dots: np.ndarray, drops: np.ndarray, normalize: bool) -> np.ndarray:
    """[N] infidelity from I·a [N, S] and f(x) - f(x - I) [N, S] (Captum's formula)."""
    if normalize:
        a2, ab, b2 = (dots * dots).sum(1), (dots * drops).sum(1), (drops * drops).sum(1)
        beta = np.where(a2 != 0, ab / np.where(a2 != 0, a2, 1.0), 0.0)
        total = beta * beta * a2 - 2 * beta * ab + b2
    else:
        total = ((dots - drops) ** 2).sum(1)
    return total / dots.shape[1]


@register
class Infidelity(Metric):
    name = "infidelity"
    category = "faithfulness"
    title = "Infidelity"
    summary = ("Mean squared gap between the map's prediction of a small random change (I · a) and the "
               "model's real change; lower is better, 0 for a perfect linear account.")
    higher_is_better: ClassVar[bool] = False
    modalities = ("image", "tabular")
    params = {
        "samples": ParamSpec("int", 50, minimum=1, maximum=10000,
                             help="Random perturbations per input (few make chance correlations large)."),
        "noise": ParamSpec("float", 0.1, minimum=0.0, maximum=100.0,
                           help="Standard deviation of the Gaussian perturbations (input units)."),
        "normalize": ParamSpec("bool", True, help="Scale the map by the best factor first (Captum's normalize)."),
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Seed of the perturbations and random map."),
        "device": DEVICE_PARAM,
        "batch_size": BATCH_PARAM,
    }

    def _evaluate(self, subject: Subject, progress, samples: int, noise: float, normalize: bool, seed: int,
                  device: str, batch_size: int, **_: Any) -> MetricResult:
        attr = subject.attribution
        n = len(attr)
        pert = perturbations(np.asarray(attr.inputs), samples, noise, seed)  # [N, S, ...]
        grid = Grid(subject.model, attr.inputs, attr.target, device, batch_size, progress)
        noise_t = torch.as_tensor(pert, device=grid.device)

        def make_row(rows: torch.Tensor):
            i, s = rows // samples, rows % samples
            return grid.x[i] - noise_t[i, s], i

        drops = grid.outputs()[:, None] - grid.scores(n * samples, make_row).reshape(n, samples)  # [N, S]
        flat = pert.reshape(n, samples, -1).astype(np.float64)  # [N, S, P]
        maps = np.stack([np.asarray(attr.values, dtype=np.float64).reshape(n, -1),
                         random_like(attr.values, attr.inputs, seed).reshape(n, -1)], axis=2)  # [N, P, 2]
        dots, chance = np.moveaxis(np.matmul(flat, maps), 2, 0)  # I · a and I · random, [N, S] each (BLAS)
        params = {"samples": samples, "noise": noise, "normalize": normalize, "seed": seed}
        return self.result(subject, infidelity_from(dots, drops, normalize),
                           random_baseline=infidelity_from(chance, drops, normalize), params=params)
