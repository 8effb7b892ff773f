"""Input × gradient (Shrikumar et al. 2016): x_i · ∂f/∂x_i.

Text models: embedding · gradient, summed over the embedding dimension. No
completeness: it equals f(x) - f(0) only for linear models.
"""
from __future__ import annotations

from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS
from explain.output.methods.engine_method import Context, EngineMethod, Partial, accumulate_gradients


@register
class InputXGradient(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "input_x_gradient"
    family = "gradient"
    title = "Input × gradient"
    params = dict(ENGINE_PARAMS)

    def run(self, ctx: Context) -> Partial:
        start = ctx.fn.start_points()
        total, _ = accumulate_gradients(ctx, 1, lambda i, s: start[i], lambda g, i, s: g * start[i])
        return Partial(ctx.to_values(total))
