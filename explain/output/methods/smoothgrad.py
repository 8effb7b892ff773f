"""SmoothGrad (Smilkov et al. 2017), as Captum's ``NoiseTunnel`` over saliency.

The gradient (absolute by default) is averaged over noisy copies x + ε,
ε ~ N(0, σ²) with σ = noise_level · (max(x) - min(x)) per input.
``smoothgrad_sq`` averages squares, ``vargrad`` takes the variance. Noise is
seeded per input, so results do not depend on the batch size.
"""
from __future__ import annotations

from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS
from explain.output.methods.engine_method import (
    Context,
    EngineMethod,
    Partial,
    accumulate_gradients,
    input_range,
    noise_points,
)
from explain.output.methods.saliency import ABS_PARAM
from explain.params import ParamSpec


@register
class SmoothGrad(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "smoothgrad"
    family = "gradient"
    title = "SmoothGrad"
    params = {
        "samples": ParamSpec("int", 16, minimum=1, maximum=1024, help="Noisy copies per input."),
        "noise_level": ParamSpec("float", 0.15, minimum=0.0, maximum=2.0, help="Noise σ as a share of the input's range."),
        "nt_type": ParamSpec("choice", "smoothgrad", choices=("smoothgrad", "smoothgrad_sq", "vargrad"),
                             help="Average, average of squares, or variance."),
        "absolute": ABS_PARAM,
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Noise seed."),
        **ENGINE_PARAMS,
    }

    def run(self, ctx: Context, samples, noise_level, nt_type, absolute, seed) -> Partial:
        start = ctx.fn.start_points()
        std = noise_level * input_range(start)  # [N]
        total, total_sq = accumulate_gradients(
            ctx, samples, noise_points(start, std, seed, samples),
            lambda g, i, s: g.abs() if absolute else g, squares=nt_type != "smoothgrad",
        )
        mean = total / samples
        if nt_type == "smoothgrad":
            out = mean
        elif nt_type == "smoothgrad_sq":
            out = total_sq / samples
        else:
            out = total_sq / samples - mean * mean
        return Partial(ctx.to_values(out))
