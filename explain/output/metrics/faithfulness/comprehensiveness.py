"""Comprehensiveness (ERASER, DeYoung et al. 2020), as an AOPC the way ferret computes it: remove the
rationale (the top-k% features of the map, k = 10, 20, ..., 100; only features with a positive
score, ferret's ``only_pos``) and average the drop of the target's probability,
p(x) - p(x without the rationale), over the thresholds whose rationale is not empty (ferret skips
those). Higher is better: the map names first what the model needs.

The rationale rule lives here only (`rationale_sets`): `sufficiency` keeps the rationale instead of
removing it, and a causal LM's token attributions are judged by the same rule
(`explain.generation.quality`). Removed features become the substrate (padding for text, as
`deletion`); ferret deletes tokens instead, which a causal LM cannot do without moving every later
position. Ties rank the first position first (ferret's ``argsort`` is not stable).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from explain.output.methods.common import BATCH_PARAM, DEVICE_PARAM
from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import SUBSTRATES, Grid, expand_mask, feature_map, random_like, ranks
from explain.output.metrics.common import substrate as substrate_of
from explain.params import ParamSpec

#: ferret's thresholds, np.arange(0.1, 1.1, 0.1), as exact tenths.
TENTHS = tuple(range(1, 11))

AOPC_PARAMS: dict[str, ParamSpec] = {
    "substrate": ParamSpec("choice", "auto", choices=SUBSTRATES,
                           help="What a removed feature becomes: auto = blurred image, zeros (tabular), padding (text)."),
    "random": ParamSpec("bool", True, help="Also score a random attribution (the chance level): twice the passes."),
    "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Seed of the random attribution."),
    "device": DEVICE_PARAM,
    "batch_size": BATCH_PARAM,
}


def rationale_sets(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ferret's rationales of feature maps [N, *features]: (sets bool [N, 10, P], valid bool [N, 10]).

    Threshold k (k/10 of the P features) takes the top (k * P) // 10 features by score, keeping
    only those with a positive score; a threshold whose set is empty is not valid (skipped).
    """
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)  # [N, P]
    p = flat.shape[1]
    counts = np.array([k * p // 10 for k in TENTHS])  # [10]
    sets = (ranks(flat)[:, None, :] < counts[None, :, None]) & (flat[:, None, :] > 0)  # [N, 10, P]
    return sets, sets.any(axis=2)


def aopc(drops: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The mean of drops [N, 10] over each row's valid thresholds: [N], NaN where none is valid."""
    kept = np.where(valid, drops, 0.0)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, kept.sum(axis=1) / np.maximum(count, 1), np.nan)


@register
class Comprehensiveness(Metric):
    name = "comprehensiveness"
    category = "faithfulness"
    title = "Comprehensiveness (AOPC)"
    summary = ("Mean drop of the target's probability when the top 10%, 20%, ..., 100% of the features "
               "(positive scores only) are removed; higher is better (ERASER, as ferret computes it).")
    higher_is_better: ClassVar[bool] = True
    judges_tokens: ClassVar[bool] = True
    keep: ClassVar[bool] = False  # sufficiency keeps the rationale and removes the rest
    params = AOPC_PARAMS

    def _evaluate(self, subject: Subject, progress, substrate: str, random: bool, seed: int, device: str,
                  batch_size: int, **_: Any) -> MetricResult:
        attr = subject.attribution
        maps = [feature_map(subject.model, attr.values)]
        if random:
            maps.append(feature_map(subject.model, random_like(attr.values, attr.inputs, seed)))
        found = [rationale_sets(m) for m in maps]
        sets = np.stack([s for s, _ in found])  # [V, N, 10, P]
        v_count, n, k_count, _p = sets.shape
        grid = Grid(subject.model, attr.inputs, attr.target, device, batch_size, progress)
        sub = grid.tensor(substrate_of(grid.model, attr.inputs, substrate))  # [N, ...]
        masks = torch.as_tensor(sets if not self.keep else ~sets, device=grid.device)
        feature_shape = maps[0].shape[1:]

        def make_row(rows: torch.Tensor):
            i, v, k = rows // (v_count * k_count), (rows // k_count) % v_count, rows % k_count
            mask = expand_mask(grid.model, masks[v, i, k].view(-1, *feature_shape))  # removed features
            return torch.where(mask, sub[i], grid.x[i]), i

        scores = grid.scores(n * v_count * k_count, make_row, probability=True).reshape(n, v_count, k_count)
        drops = grid.outputs(probability=True)[:, None, None] - scores  # [N, V, 10]
        values = [aopc(drops[:, v], found[v][1]) for v in range(v_count)]
        curves = [np.where(found[v][1], drops[:, v], np.nan) for v in range(v_count)]
        params = {"substrate": substrate, "random": random, "seed": seed}
        return self.result(subject, values[0], random_baseline=values[1] if random else None,
                           curve_x=np.array(TENTHS) / 10, curve=curves[0], random_curve=curves[1] if random else None,
                           params=params)

