"""Saliency (Simonyan et al. 2014): the gradient of the target logit at the input.

Like ``captum.attr.Saliency`` the absolute value is taken by default. Text
models: |gradient| at the token embeddings, summed over the embedding
dimension. No completeness: gradients do not add up to f(x) - f(b).
"""
from __future__ import annotations

from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS
from explain.output.methods.engine_method import Context, EngineMethod, Partial, accumulate_gradients
from explain.params import ParamSpec

ABS_PARAM = ParamSpec("bool", True, help="Take the absolute value of the gradient (Captum's default).")


@register
class Saliency(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "saliency"
    family = "gradient"
    title = "Saliency (gradient)"
    params = {"absolute": ABS_PARAM, **ENGINE_PARAMS}

    def run(self, ctx: Context, absolute: bool) -> Partial:
        start = ctx.fn.start_points()
        total, _ = accumulate_gradients(
            ctx, 1, lambda i, s: start[i], lambda g, i, s: g.abs() if absolute else g
        )
        return Partial(ctx.to_values(total))
