"""Integrated gradients (Sundararajan et al. 2017) through Captum.

attr_i = (x_i - b_i) * ∫_0^1 ∂f(b + a (x - b)) / ∂x_i da, approximated with
Gauss-Legendre quadrature (Captum's default). Text models are attributed at
the output of their embedding layer and summed over the embedding dimension.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..attribution import Attribution, compute_completeness_error
from ..baselines import make_baseline
from ..errors import IncompatibleInput
from ..model import LoadedModel
from .base import Explainer, register
from .common import BASELINE_PARAM, STEPS_PARAM, array_param, find_embedding, override_output, resolve_targets


@register
class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    family = "gradient"
    title = "Integrated gradients"
    params = {
        "steps": STEPS_PARAM,
        "baseline": BASELINE_PARAM,
        "baseline_array": array_param(),
        "background": array_param(),
    }

    def is_compatible(self, model: LoadedModel) -> bool:
        return self.incompatibility(model) is None

    def incompatibility(self, model: LoadedModel) -> str | None:
        if model.modality == "text" and find_embedding(model) is None:
            return (
                "Integrated gradients on a text model needs its embedding layer, which is not reachable "
                f"in a {model.format} file; use feature_ablation, or load the weights (safetensors)."
            )
        return None

    def _explain(self, model, inputs, target, progress, steps, baseline, baseline_array, background):
        from captum.attr import IntegratedGradients as CaptumIG
        from captum.attr import LayerIntegratedGradients

        start = time.perf_counter()
        x = model.as_tensor(inputs)
        targets = resolve_targets(model, x, target)
        t = torch.as_tensor(targets, device=x.device)
        if model.modality == "text":
            _, layer = find_embedding(model)
            ref = torch.zeros_like(x) if baseline == "zero" else model.as_tensor(
                make_baseline(baseline, inputs, "tabular", baseline_array, background).astype(np.int64)
            )
            ig = LayerIntegratedGradients(model.module, layer)
            attr, _ = ig.attribute(x, baselines=ref, target=t, n_steps=steps, return_convergence_delta=True)
            values = attr.sum(dim=-1)  # [N, L, D] -> [N, L]
        else:
            ref = torch.as_tensor(
                make_baseline(baseline, inputs, model.modality, baseline_array, background), device=x.device
            )
            ig = CaptumIG(model.module)
            values = ig.attribute(x, baselines=ref, target=t, n_steps=steps)
        values_np = values.detach().float().cpu().numpy()
        rows = np.arange(len(targets))
        output = model.predict_logits(x)[rows, targets]
        if model.modality == "text":
            with torch.no_grad(), override_output(layer, layer(ref)):
                base_value = model.predict_logits(x)[rows, targets]
        else:
            base_value = model.predict_logits(ref)[rows, targets]
        if progress is not None:
            progress(1, 1)
        return Attribution(
            values=values_np,
            inputs=np.asarray(inputs),
            target=targets,
            method=self.name,
            params={"steps": steps, "baseline": baseline},
            base_value=base_value,
            output=output,
            completeness_error=compute_completeness_error(values_np, output, base_value),
            seconds=time.perf_counter() - start,
            device=str(x.device),
            precision="fp32",
        )
