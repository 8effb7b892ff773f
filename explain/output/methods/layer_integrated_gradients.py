"""Layer integrated gradients on the token-embedding layer of text models.

IG in embedding space (as ``captum.attr.LayerIntegratedGradients`` on the
embedding layer) from the embeddings of a *reference text*: padding (first
token kept), ``<unk>`` for every real token, or the zero vector. The token
ids of the input keep driving the padding mask. One value per token (summed
over the embedding dimension); Σ values = f(x) - f(reference).
"""
from __future__ import annotations

import torch

from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, STEPS_PARAM, TOLERANCE_PARAM
from explain.output.methods.engine_method import Context, EngineMethod, Partial
from explain.output.methods.integrated_gradients import integrated_gradients_with_tolerance
from explain.params import ParamSpec

REFERENCE_PARAM = ParamSpec(
    "choice", "padding", choices=("padding", "unk", "zero"),
    help="Reference text: padding (first token kept), <unk> for every token, or zero embeddings.",
)


def reference_ids(ids: torch.Tensor, kind: str) -> torch.Tensor:
    """Token ids [N, L] of the reference text; the first token (``<cls>``) is kept."""
    ref = torch.zeros_like(ids)  # id 0: <pad>
    if kind == "unk":
        ref = torch.where(ids != 0, torch.ones_like(ids), ref)  # id 1: <unk>
    ref[:, 0] = ids[:, 0]
    return ref


@register
class LayerIntegratedGradients(EngineMethod):
    name = "layer_integrated_gradients"
    family = "layer"
    title = "Layer integrated gradients (embeddings)"
    completeness = True
    modalities = ("text",)
    params = {"steps": STEPS_PARAM, "reference": REFERENCE_PARAM, "tolerance": TOLERANCE_PARAM, **ENGINE_PARAMS}

    def run(self, ctx: Context, steps, reference, tolerance) -> Partial:
        start = ctx.fn.start_points()
        base = torch.zeros_like(start) if reference == "zero" else ctx.fn.embed(reference_ids(ctx.x, reference))
        return integrated_gradients_with_tolerance(ctx, base, steps, tolerance)
