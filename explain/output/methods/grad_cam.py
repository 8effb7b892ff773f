"""Grad-CAM (Selvaraju et al. 2017) as an attribution method.

The computation and the list of layers it can run on are
`explain.output.layer_importance`'s (`grad_cam_layers`, `grad_cam_rows`),
the same the Structure page draws; this method keeps the raw maps (not
normalised), broadcast over the channels so values are shaped like the input.
The default layer is the first of `grad_cam_layers` (the last spatial block at
the shallowest depth, e.g. a ResNet's last stage). Needs hooks on the layers
(`LoadedModel.hookable_module`): eager models and ``.pt2`` programs with a
dynamic batch. Batched by the engine. No completeness.
"""
from __future__ import annotations

import numpy as np

from explain.errors import GlassboxError
from explain.model import LoadedModel
from explain.output.layer_importance import grad_cam_layer, grad_cam_layers, grad_cam_rows, module_types
from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS
from explain.output.methods.engine_method import Context, EngineMethod, Partial
from explain.params import ParamSpec


def grad_cam_incompatibility(model: LoadedModel) -> str | None:
    """Why Grad-CAM cannot run on this image model (None when it can): no hooks, or no conv layer."""
    reason = model.hook_incompatibility("Grad-CAM")
    if reason:
        return f"{reason} Use integrated_gradients or occlusion."
    if "Conv2d" not in module_types(model).values():
        return "Grad-CAM needs a convolutional layer; this model has none. Use integrated_gradients."
    return None


@register
class GradCam(EngineMethod):
    name = "grad_cam"
    family = "layer"
    title = "Grad-CAM"
    modalities = ("image",)
    params = {
        "layer": ParamSpec("str", "", help="Module name of the layer (a spatial output); "
                           "empty = the default, the last spatial stage."),
        **ENGINE_PARAMS,
    }

    def incompatibility(self, model) -> str | None:
        return super().incompatibility(model) or grad_cam_incompatibility(model)

    def param_choices(self, model: LoadedModel) -> dict[str, list]:
        """``{"layer": grad_cam_layers}`` measured on a zero input shaped by the spec (the default first)."""
        example = np.zeros((1, *model.spec.input_shape), dtype=np.float32)
        try:
            return {"layer": grad_cam_layers(model, example)}
        except GlassboxError:  # no hooks, or the model refused a zero image: the free-text field stays
            return {}

    def run(self, ctx: Context, layer) -> Partial:
        name = grad_cam_layer(ctx.model, ctx.inputs[:1], layer)
        n, c, h, w = ctx.x.shape
        out = np.zeros((n, 1, h, w), dtype=np.float64)

        def work(lo: int, hi: int) -> None:
            maps = grad_cam_rows(ctx.model, ctx.x[lo:hi], name, ctx.targets[lo:hi])  # [hi - lo, H, W]
            out[lo:hi, 0] = maps.double().cpu().numpy()

        ctx.engine.map_chunks(n, work, row_bytes=int(ctx.x[:1].numel() * 4) * 8)
        return Partial(np.broadcast_to(out, (n, c, h, w)).copy(), params={"layer": name})
