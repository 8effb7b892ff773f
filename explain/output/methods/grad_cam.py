"""Grad-CAM (Selvaraju et al. 2017) on the last convolutional stage.

``captum.attr.LayerGradCam`` on the last top-level block that holds a conv
(e.g. a ResNet's last stage), ReLU of the channel-weighted activation map,
bilinearly upsampled to the input size and broadcast over the channels, so
values are shaped like the input. Eager models only (it needs module hooks).
Batched by the engine. No completeness.
"""
from __future__ import annotations

import numpy as np
import torch

from explain.output.engine import is_eager
from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, find_last_conv
from explain.output.methods.engine_method import Context, EngineMethod, Partial
from explain.params import ParamSpec


def find_layer(model, name: str):
    """The named submodule, or the last conv stage when ``name`` is empty."""
    if not name:
        return find_last_conv(model)
    modules = dict(model.module.named_modules())
    if name not in modules:
        from explain.errors import UsageError

        raise UsageError(f"The model has no layer {name!r}.")
    return name, modules[name]


@register
class GradCam(EngineMethod):
    name = "grad_cam"
    family = "layer"
    title = "Grad-CAM"
    modalities = ("image",)
    params = {
        "layer": ParamSpec("str", "", help="Module name of the conv layer; empty = last conv stage."),
        **ENGINE_PARAMS,
    }

    def incompatibility(self, model) -> str | None:
        reason = super().incompatibility(model)
        if reason:
            return reason
        if not is_eager(model):
            return (f"Grad-CAM needs module hooks, which a {model.format} file does not run; "
                    "use integrated_gradients or occlusion.")
        if find_last_conv(model) is None:
            return "Grad-CAM needs a convolutional layer; this model has none. Use integrated_gradients."
        return None

    def run(self, ctx: Context, layer) -> Partial:
        from captum.attr import LayerAttribution, LayerGradCam

        name, module = find_layer(ctx.model, layer)
        cam = LayerGradCam(ctx.model.module, module)
        n, c, h, w = ctx.x.shape
        out = np.zeros((n, 1, h, w), dtype=np.float64)

        def work(lo: int, hi: int) -> None:
            with torch.enable_grad():
                maps = cam.attribute(ctx.x[lo:hi], target=ctx.targets[lo:hi], relu_attributions=True)
            up = LayerAttribution.interpolate(maps.detach(), (h, w), interpolate_mode="bilinear")
            out[lo:hi] = up.double().cpu().numpy()

        ctx.engine.map_chunks(n, work, row_bytes=int(ctx.x[:1].numel() * 4) * 8)
        return Partial(np.broadcast_to(out, (n, c, h, w)).copy(), params={"layer": name})
