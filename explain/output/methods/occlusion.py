"""Occlusion (Zeiler & Fergus 2014): slide a patch of baseline values over the image.

Each patch position p gives Δ_p = f(x) - f(x with the patch replaced by the
baseline); a pixel's attribution is the mean Δ over the patches covering it.
Patches start at 0 and move by ``stride`` until the image is covered (the
last one may be cut off), exactly as ``captum.attr.Occlusion`` with a window
over all channels. Forward passes only, batched by the engine. No
completeness.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, array_param
from explain.output.methods.engine_method import Context, EngineMethod, Partial, reference_points
from explain.params import ParamSpec

OCCLUSION_BASELINE = ParamSpec(
    "choice", "zero", choices=("zero", "blurred", "mean", "file"), help="What a patch is replaced with."
)


def window_masks(height: int, width: int, window: int, stride: int) -> torch.Tensor:
    """Patch masks [P, H, W] (bool), row-major over positions, Captum's coverage."""
    def starts(size: int) -> list[int]:
        count = math.ceil(max(size - window, 0) / stride) + 1
        return [k * stride for k in range(count)]

    masks = []
    for top in starts(height):
        for left in starts(width):
            m = torch.zeros(height, width, dtype=torch.bool)
            m[top : top + window, left : left + window] = True
            masks.append(m)
    return torch.stack(masks)


def ablation_deltas(ctx: Context, masks: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
    """Δ [N, P] = f(x) - f(x with mask p replaced), forward passes on the engine.

    Args:
        masks: [P, *broadcastable to one input] bool.
        replacement: [N, ...] values put where a mask is True.
    """
    start = ctx.fn.start_points()
    n, p = start.shape[0], masks.shape[0]
    masks = masks.to(start.device)

    def make(lo, hi):
        r = torch.arange(lo, hi, device=start.device)
        i, k = r // p, r % p
        return torch.where(masks[k], replacement[i], start[i]), i, ctx.targets[i]

    perturbed = ctx.engine.evaluate_rows(ctx.fn, n * p, make, int(start[:1].numel() * 4), report=True)
    full = ctx.engine.evaluate(ctx.fn, start, torch.arange(n, device=start.device), ctx.targets)
    return torch.as_tensor(full[:, None] - perturbed.reshape(n, p))  # [N, P] float64


@register
class Occlusion(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "occlusion"
    family = "perturbation"
    title = "Occlusion"
    modalities = ("image",)
    params = {
        "window": ParamSpec("int", 4, minimum=1, maximum=512, help="Patch side in pixels."),
        "stride": ParamSpec("int", 2, minimum=1, maximum=512, help="Patch step in pixels (at most the window)."),
        "baseline": OCCLUSION_BASELINE,
        **ENGINE_PARAMS,
        "baseline_array": array_param(),
        "background": array_param(),
    }

    def run(self, ctx: Context, window, stride, baseline, baseline_array, background) -> Partial:
        n, c, h, w = ctx.x.shape
        stride = min(stride, window)
        masks = window_masks(h, w, min(window, max(h, w)), stride)  # [P, H, W]
        replacement = reference_points(ctx, baseline, baseline_array, background)  # [N, C, H, W]
        deltas = ablation_deltas(ctx, masks[:, None], replacement)  # [N, P]
        flat = masks.reshape(masks.shape[0], -1).double()  # [P, H*W]
        total = deltas @ flat  # [N, H*W]
        counts = flat.sum(0).clamp_min(1.0)  # [H*W]
        per_pixel = (total / counts).reshape(n, 1, h, w)
        values = np.broadcast_to(per_pixel.numpy(), (n, c, h, w)).copy()
        return Partial(values, params={"stride": stride, "patches": int(masks.shape[0])})
