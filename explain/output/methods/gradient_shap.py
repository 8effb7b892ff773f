"""GradientSHAP / expected gradients (Erion et al. 2021), as Captum's ``GradientShap``.

For each input, ``samples`` points b + a (x - b) with b drawn from the
background (weighted) and a ~ U(0, 1); the attribution is the mean of
∇f(point) · (x - b). In expectation Σ values = f(x) - E[f(b)]: the reported
completeness error shrinks as samples grow (flagged above `GradientShap.completeness_tolerance`:
raise samples). Draws are seeded per input, so results do not depend on the batch size. The
background used is named in the params (``background_description``) and under each map.
"""
from __future__ import annotations

import numpy as np
import torch

from explain.model import numpy_tensor
from explain.output.baselines import background_description, background_set, describe_background
from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, array_param
from explain.output.methods.engine_method import (
    Context,
    EngineMethod,
    Partial,
    accumulate_gradients,
    input_range,
    noise_rows,
)
from explain.params import ParamSpec

SAMPLES_PARAM = ParamSpec("int", 32, minimum=1, maximum=4096, help="Random (background, position) draws per input.")
BACKGROUND_SIZE_PARAM = ParamSpec(
    "int", 32, minimum=1, maximum=1024, help="Background rows kept (k-means summary for tabular data)."
)
#: the completeness tolerance of the sampling methods (gradient_shap, shap_gradient): complete only
#: in expectation, their sums miss f(x) - E[f(b)] by some 10% at their default samples.
SAMPLING_TOLERANCE = 0.2
FALLBACK_PARAM = ParamSpec(
    "choice", "zero", choices=("zero", "mean"), help="Reference when no background set is uploaded."
)


def background_points(ctx: Context, background, size: int, fallback: str, seed: int):
    """(points [M, ...], weights [M] tensor, description (`describe_background`)) of the background
    in point space."""
    rows, weights = background_set(background, ctx.inputs, ctx.model.modality, size, fallback, seed)
    described = background_description(background, rows, ctx.inputs, ctx.model.modality, fallback)
    if ctx.fn.space == "embedding":
        points = ctx.fn.embed(ctx.model.as_tensor(rows))  # token ids -> [M, L, D]
        if background is None:
            points = torch.zeros_like(points)  # no background: the zero embedding
            described = describe_background("zero_embedding", 1, len(ctx.inputs))
    else:
        points = numpy_tensor(rows, dtype=torch.float32, device=ctx.engine.device)
    return points, torch.as_tensor(weights, dtype=torch.float64), described


def expected_background_value(ctx: Context, points: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """E_b[f(b)] per input [N] for the target (text: with each input's own token mask)."""
    n, m = len(ctx.targets), points.shape[0]
    device = ctx.engine.device
    w = weights.numpy()
    if ctx.fn.space == "input":
        per_target = []
        for t in range(int(ctx.targets.max()) + 1 if n else 0):
            tt = torch.full((m,), t, device=device)
            per_target.append(ctx.engine.evaluate(ctx.fn, points, torch.zeros(m, dtype=torch.long, device=device), tt) @ w)
        return np.array([per_target[int(t)] for t in ctx.targets.tolist()])
    row_bytes = int(points[:1].numel() * 4)

    def make(lo, hi):
        r = torch.arange(lo, hi, device=device)
        i, j = r // m, r % m
        return points[j], i, ctx.targets[i]

    values = ctx.engine.evaluate_rows(ctx.fn, n * m, make, row_bytes).reshape(n, m)
    return values @ w


@register
class GradientShap(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "gradient_shap"
    family = "shap"
    title = "GradientSHAP (expected gradients)"
    completeness = True
    completeness_tolerance = SAMPLING_TOLERANCE
    completeness_remedy = "raise samples"
    params = {
        "samples": SAMPLES_PARAM,
        "background_size": BACKGROUND_SIZE_PARAM,
        "baseline": FALLBACK_PARAM,
        "noise_level": ParamSpec("float", 0.0, minimum=0.0, maximum=2.0, help="Gaussian noise σ (share of input range) added to each point."),
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Sampling seed."),
        **ENGINE_PARAMS,
        "background": array_param(),
    }

    def run(self, ctx: Context, samples, background_size, baseline, noise_level, seed, background) -> Partial:
        start = ctx.fn.start_points()
        bg, weights, described = background_points(ctx, background, background_size, baseline, seed)
        n = len(ctx.targets)
        picks, alphas = [], []
        for i in range(n):  # per-input draws: independent of batching
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
            picks.append(torch.multinomial(weights.float(), samples, replacement=True, generator=gen))
            alphas.append(torch.rand(samples, generator=gen))
        pick = torch.stack(picks).to(start.device)  # [N, S]
        alpha = torch.stack(alphas).to(start.device)  # [N, S]
        std = noise_level * input_range(start)
        shape = (-1,) + (1,) * (start.dim() - 1)

        def make_point(i, s):
            b = bg[pick[i, s]]
            point = b + alpha[i, s].view(shape) * (start[i] - b)
            if noise_level > 0:
                point = point + std[i].view(shape) * noise_rows(
                    seed + 1, i, s, samples, tuple(start.shape[1:]), start.device
                )
            return point

        total, _ = accumulate_gradients(ctx, samples, make_point, lambda g, i, s: g * (start[i] - bg[pick[i, s]]))
        base_value = expected_background_value(ctx, bg, weights)
        return Partial(ctx.to_values(total / samples), base_value,
                       {"background_rows": int(bg.shape[0]), "background_description": described})
