"""Feature ablation: replace one feature (tabular) or token (text) at a time.

Attribution of feature j = f(x) - f(x with feature j set to the baseline).
Tabular baselines: zero (the training mean for standardised data), mean or a
file. Text: the token is replaced by padding (id 0), which also hides it from
attention — token ablation. It needs forward passes only, so it works on
every model format (TorchScript text models included). No completeness.
"""
from __future__ import annotations

import torch

from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, array_param
from explain.output.methods.engine_method import Context, EngineMethod, Partial, reference_points
from explain.output.methods.occlusion import ablation_deltas
from explain.params import ParamSpec

ABLATION_BASELINE = ParamSpec(
    "choice", "zero", choices=("zero", "mean", "file"),
    help="Value an ablated feature takes (text: always the padding token).",
)


@register
class FeatureAblation(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "feature_ablation"
    family = "perturbation"
    title = "Feature ablation"
    modalities = ("tabular", "text")
    space = "input"
    params = {
        "baseline": ABLATION_BASELINE,
        **ENGINE_PARAMS,
        "baseline_array": array_param(),
        "background": array_param(),
    }

    def run(self, ctx: Context, baseline, baseline_array, background) -> Partial:
        n, f = ctx.x.shape
        masks = torch.eye(f, dtype=torch.bool)  # [F, F]: feature j alone
        if ctx.model.modality == "text":
            replacement = torch.zeros_like(ctx.x)  # padding id 0
            recorded = "padding"
        else:
            replacement = reference_points(ctx, baseline, baseline_array, background)
            recorded = baseline
        deltas = ablation_deltas(ctx, masks, replacement)  # [N, F]
        return Partial(deltas.numpy(), params={"baseline": recorded})
