"""Deletion (Petsiuk et al. 2018, RISE): remove features in attribution order, largest first,
in ``steps`` equal steps, replacing them with a substrate; the target's probability falls.
The score is the area under that curve over the fraction removed (lower is better: a
faithful map names first what the model needs).

The curves of the method and of its random attribution are one batched grid on the engine
(`perturbation_curves`): N x (steps + 1) forward passes, N x 2 x steps with the random curve (the
ends are the same rows for both), which `explain.output.metrics.faithfulness.insertion` shares.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from explain.output.methods.common import BATCH_PARAM, DEVICE_PARAM
from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import SUBSTRATES, Grid, feature_map, random_like, ranks, substrate
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
    rows_as = _RowLayout(grid, start, end)
    # each map's curve starts at the start and ends at the end: the first map's run of steps holds them,
    # the others' runs hold their inner steps alone (with the random curve 2 x steps rows an input, not 2 x (steps + 1))
    inner = k_count - 2
    per_input = k_count + (v_count - 1) * inner
    runs = [(0, 0, 0, k_count)] + [(k_count + (v - 1) * inner, v, 1, inner) for v in range(1, v_count)]

    def make_row(rows: torch.Tensor):  # rows: a contiguous range; input i's rows: its runs (first row, map, step, count)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        out, values = rows_as.empty(hi - lo)  # values: out's memory as [B, values]
        for i in range(lo // per_input, (hi - 1) // per_input + 1):  # one (input, map) run at a time: no gathers
            for j, v, k, length in runs:
                a = i * per_input + j
                first, last = max(a, lo), min(a + length, hi)
                if first < last:
                    rows_as.fill(values[first - lo:last - lo], i, order[v, i], counts[k + first - a:k + last - a])
        return out, rows // per_input

    scores = grid.scores(n * per_input, make_row, probability).reshape(n, per_input)
    ends = scores[:, :1], scores[:, k_count - 1:k_count]  # [N, 1] each: the start's and the end's
    curves = np.stack([scores[:, :k_count]] + [np.concatenate([ends[0], scores[:, j:j + inner], ends[1]], axis=1)
                                               for j, _, _, _ in runs[1:]])  # [V, N, K]
    return curves, counts.cpu().numpy() / max(p, 1)


class _RowLayout:
    """Perturbed rows built straight in the memory layout the model runs them in: a CNN run
    channels-last (`Layout`) gets NHWC rows, not NCHW ones it would copy into that layout
    (the copy: ~2.5 % of Q1 at 1 thread). Each value is the start's or the end's, bit for bit: with 4- or
    8-byte values ``start ^ ((start ^ end) & m)`` on their bits, ``m`` all ones where the value's
    feature is switched (``(rank - count) >> 31``: negative where rank < count), ~4x faster than
    ``torch.where`` on a bool mask; other values by ``torch.where``."""

    def __init__(self, grid: Grid, start: torch.Tensor, end: torch.Tensor):  # [N, ...] each
        self.grid, self.start, self.end = grid, start, end
        self.bits = {4: torch.int32, 8: torch.int64}.get(start.element_size())
        self.image = grid.model.modality == "image"  # [N, C, *pixels]: a pixel's C values switch together
        self._flat: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def last_channel(self) -> bool:
        return self.image and self.start.dim() == 4 and self.grid.fn.layout.channels_last  # False after a refusal

    def empty(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [b, ...] to fill, and the same memory as [b, values] in their order."""
        x = self.start
        if self.last_channel:
            out = torch.empty((b, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
            return out, out.permute(0, 2, 3, 1).view(b, -1)
        out = torch.empty((b, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out, out.view(b, -1)

    def fill(self, values: torch.Tensor, i: int, order: torch.Tensor, counts: torch.Tensor) -> None:
        """``values`` [steps, values] of input ``i``: the end's where a feature's rank ``order`` [P]
        is below the step's count ``counts`` [steps], else the start's."""
        start, other = self._values(self.last_channel)  # other: the end, or start ^ end as bits
        if self.bits is None:
            rank = self._value_rank(order)  # [1, values]
            torch.where(rank < counts[:, None], other[i], start[i], out=values)
            return
        bits = values.view(self.bits)
        torch.sub(self._value_rank(order.to(self.bits)), counts[:, None].to(self.bits), out=bits)
        bits.bitwise_right_shift_(8 * values.element_size() - 1)  # all ones where switched, else 0
        bits.bitwise_and_(other[i]).bitwise_xor_(start[i])

    def _value_rank(self, order: torch.Tensor) -> torch.Tensor:
        """[1, values]: each value's feature rank, from the features' ``order`` [P] (pixels: all channels)."""
        if not self.image:
            return order.reshape(1, -1)
        c, p = self.start.shape[1], order.numel()
        return (order[:, None].expand(p, c) if self.last_channel else order[None].expand(c, p)).reshape(1, -1)

    def _values(self, last_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """start and end as [N, values] in the rows' order; as bits: start and start ^ end."""
        if last_channel not in self._flat:
            start, end = ((t.permute(0, 2, 3, 1) if last_channel else t).reshape(t.shape[0], -1)
                          for t in (self.start, self.end))
            if self.bits is not None:
                start, end = start.view(self.bits), start.view(self.bits) ^ end.view(self.bits)
            self._flat[last_channel] = start, end
        return self._flat[last_channel]


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
