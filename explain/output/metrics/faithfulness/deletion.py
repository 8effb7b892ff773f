"""Deletion (Petsiuk et al. 2018, RISE): remove features in attribution order, largest first,
in ``steps`` equal steps, replacing them with a substrate; the target's probability falls.
The score is the area under that curve over the fraction removed (lower is better: a
faithful map names first what the model needs).

The curves of the method and of its random attribution are one batched grid of
N x 2 x (steps + 1) forward passes on the engine (`PerturbationCurve`), which
`explain.output.metrics.faithfulness.insertion` shares.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from explain.output.methods.common import BATCH_PARAM, DEVICE_PARAM
from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import SUBSTRATES, Grid, expand_mask, feature_map, random_like, ranks, substrate
from explain.params import ParamSpec

CURVE_PARAMS: dict[str, ParamSpec] = {
    "steps": ParamSpec("int", 20, minimum=2, maximum=1024, help="Steps from no feature to all features."),
    "substrate": ParamSpec("choice", "auto", choices=SUBSTRATES,
                           help="What a removed feature becomes: auto = blurred image, zeros (tabular), padding (text)."),
    "output": ParamSpec("choice", "probability", choices=("probability", "logit"),
                        help="Score the target's softmax probability or its logit."),
    "random": ParamSpec("bool", True, help="Also score a random attribution (the chance level): twice the passes."),
    "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Seed of the random attribution."),
    "device": DEVICE_PARAM,
    "batch_size": BATCH_PARAM,
}


def curve_fractions(n_features: int, steps: int) -> np.ndarray:
    """[steps + 1] features removed at each step (0 .. n_features), as counts."""
    return np.round(np.linspace(0, n_features, steps + 1)).astype(np.int64)


def auc(curve: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each row of ``curve`` [N, K] over ``x`` [K] in [0, 1]."""
    return ((curve[:, 1:] + curve[:, :-1]) * np.diff(x)[None] / 2).sum(axis=1)


def perturbation_curves(subject: Subject, maps: list[np.ndarray], steps: int, kind: str, insert: bool,
                        probability: bool, device: str, batch_size: int, progress) -> tuple[np.ndarray, np.ndarray]:
    """Scores [V, N, steps + 1] along each map's order, and the fractions [steps + 1].

    Args:
        maps: V feature maps [N, *features] (the method's, the random one's).
        insert: start from the substrate and put the input's features back (insertion);
            else start from the input and replace its features (deletion).
    """
    attr = subject.attribution
    grid = Grid(subject.model, attr.inputs, attr.target, device, batch_size, progress)
    x = grid.x  # [N, ...]
    sub = grid.tensor(substrate(grid.model, attr.inputs, kind))  # [N, ...]
    start, end = (sub, x) if insert else (x, sub)
    order = torch.as_tensor(np.stack([ranks(m) for m in maps]), device=grid.device)  # [V, N, P]
    v_count, n, p = order.shape
    counts = torch.as_tensor(curve_fractions(p, steps), device=grid.device)  # [K]
    k_count = counts.numel()
    feature_shape = maps[0].shape[1:]

    def make_row(rows: torch.Tensor):  # rows: a contiguous range; row = (input i, map v, step k), k fastest
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        # contiguous: where runs ~2x faster into NCHW than into NHWC (3 channels innermost), and
        # the model's layout copy after it costs less than that difference
        out = torch.empty((hi - lo, *x.shape[1:]), dtype=x.dtype, device=x.device)
        for a in range(lo - lo % k_count, hi, k_count):  # one (input, map) run of steps at a time: no gathers
            first, last = max(a, lo), min(a + k_count, hi)
            i, v = a // (v_count * k_count), (a // k_count) % v_count
            mask = order[v, i][None] < counts[first - a:last - a, None]  # [steps, P]: features switched
            mask = expand_mask(grid.model, mask.view(-1, *feature_shape))
            torch.where(mask, end[i], start[i], out=out[first - lo:last - lo])  # [steps, ...]
        return out, rows // (v_count * k_count)

    scores = grid.scores(n * v_count * k_count, make_row, probability)
    curves = scores.reshape(n, v_count, k_count).transpose(1, 0, 2)  # [V, N, K]
    return curves, counts.cpu().numpy() / max(p, 1)


@register
class Deletion(Metric):
    name = "deletion"
    category = "faithfulness"
    title = "Deletion AUC"
    summary = ("Area under the target's score as the most important features are removed first; "
               "lower is better (the model loses its answer fast).")
    higher_is_better: ClassVar[bool] = False
    judges_tokens: ClassVar[bool] = True
    insert: ClassVar[bool] = False
    params = CURVE_PARAMS

    def _evaluate(self, subject: Subject, progress, steps: int, substrate: str, output: str, random: bool,
                  seed: int, device: str, batch_size: int, **_: Any) -> MetricResult:
        attr = subject.attribution
        maps = [feature_map(subject.model, attr.values)]
        if random:
            maps.append(feature_map(subject.model, random_like(attr.values, attr.inputs, seed)))
        curves, x = perturbation_curves(subject, maps, steps, substrate, self.insert,
                                        output == "probability", device, batch_size, progress)
        params = {"steps": steps, "substrate": substrate, "output": output, "random": random, "seed": seed}
        chance = curves[1] if random else None
        return self.result(subject, auc(curves[0], x), random_baseline=None if chance is None else auc(chance, x),
                           curve_x=x, curve=curves[0], random_curve=chance, params=params)
