"""SHAP GradientExplainer (expected gradients), computed by ``shap`` itself.

``shap.GradientExplainer(model, background).shap_values(x)`` with the
engine's batch size; only the explained class is computed (one pass per
distinct target, through a one-output view of the model). Image and tabular
models (shap differentiates float inputs). Completeness in expectation:
Σ values ≈ f(x) - E[f(background)].
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from explain.model import numpy_tensor
from explain.output.baselines import background_description, background_set
from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, array_param
from explain.output.methods.engine_method import Context, EngineMethod, Partial
from explain.output.methods.gradient_shap import BACKGROUND_SIZE_PARAM, FALLBACK_PARAM, SAMPLING_TOLERANCE
from explain.params import ParamSpec


class _OneOutput(nn.Module):
    """Logit ``column`` of a model as a [B, 1] output; the model is not a child,
    so shap's ``.eval()`` never reaches (exported) modules that refuse it."""

    def __init__(self, model, column: int):
        super().__init__()
        self._call = [model]
        self.column = column

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [B, 1]
        return self._call[0](x)[:, self.column : self.column + 1]


@register
class ShapGradient(EngineMethod):
    name = "shap_gradient"
    family = "shap"
    title = "SHAP GradientExplainer"
    completeness = True
    completeness_tolerance = SAMPLING_TOLERANCE
    completeness_remedy = "raise samples"
    modalities = ("image", "tabular")
    params = {
        "samples": ParamSpec("int", 64, minimum=1, maximum=4096, help="Samples per input (shap's nsamples)."),
        "background_size": BACKGROUND_SIZE_PARAM,
        "baseline": FALLBACK_PARAM,
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="shap's rseed."),
        **ENGINE_PARAMS,
        "background": array_param(),
    }

    def run(self, ctx: Context, samples, background_size, baseline, seed, background) -> Partial:
        import shap

        rows, _ = background_set(background, ctx.inputs, ctx.model.modality, background_size, baseline, seed,
                                 kmeans=False)
        bg = numpy_tensor(rows, dtype=torch.float32, device=ctx.engine.device)
        x = ctx.x.float()
        values = np.zeros(x.shape, dtype=np.float64)
        targets = ctx.targets.cpu().numpy()
        batch = ctx.engine.batch_size or max(1, min(samples, (8 << 20) // max(int(x[:1].numel()) * 4, 1)))
        groups = np.unique(targets)
        for done, column in enumerate(groups):
            idx = np.flatnonzero(targets == column)
            explainer = shap.GradientExplainer(_OneOutput(ctx.model.module, int(column)), bg, batch_size=batch)
            sv = explainer.shap_values(x[idx], nsamples=samples, rseed=seed)
            values[idx] = np.asarray(sv).reshape(len(idx), *x.shape[1:])
            if ctx.engine.progress is not None:
                ctx.engine.progress(done + 1, len(groups))
        m = bg.shape[0]
        base = np.array([
            ctx.engine.evaluate(ctx.fn, bg, torch.zeros(m, dtype=torch.long, device=bg.device),
                                torch.full((m,), int(t), device=bg.device)).mean()
            for t in targets
        ])
        described = background_description(background, rows, ctx.inputs, ctx.model.modality, baseline, kmeans=False)
        return Partial(values, base, {"background_rows": int(m), "batch_size": batch,
                                      "background_description": described})
