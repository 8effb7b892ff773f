"""Layer integrated gradients on the token-embedding layer of text models.

IG in embedding space (as ``captum.attr.LayerIntegratedGradients`` on the
embedding layer) from the embeddings of a *reference text*: padding (first
token kept), ``<unk>`` for every real token, or the zero vector. The token
ids of the input keep driving the padding mask. One value per token (summed
over the embedding dimension); Σ values = f(x) - f(reference).
"""
from __future__ import annotations

import torch

from explain.output.baselines import text_reference
from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, STEPS_PARAM, TOLERANCE_PARAM
from explain.output.methods.engine_method import Context, EngineMethod, Partial
from explain.output.methods.integrated_gradients import integrated_gradients_with_tolerance
from explain.params import ParamSpec

REFERENCE_PARAM = ParamSpec(
    "choice", "padding", choices=("padding", "unk", "zero"),
    help="Reference text: padding (first token kept), <unk> for every token, or zero embeddings.",
)


#: the ``reference`` choices that are reference texts -> `text_reference` kinds.
REFERENCE_TEXTS = {"padding": "pad", "unk": "unk"}


@register
class LayerIntegratedGradients(EngineMethod):
    name = "layer_integrated_gradients"
    family = "layer"
    title = "Layer integrated gradients (embeddings)"
    completeness = True
    outputs_with_baseline = True
    modalities = ("text",)
    params = {"steps": STEPS_PARAM, "reference": REFERENCE_PARAM, "tolerance": TOLERANCE_PARAM, **ENGINE_PARAMS}
    per_input_params = ("steps",)  # the tolerance raises them per input

    def run(self, ctx: Context, steps, reference, tolerance, per_input=None) -> Partial:
        start = ctx.fn.start_points()
        if reference == "zero":
            base = torch.zeros_like(start)
        else:  # each input's own first token kept
            base = ctx.fn.embed(text_reference(ctx.x, ctx.model.spec, REFERENCE_TEXTS[reference], keep_first="input"))
        return integrated_gradients_with_tolerance(ctx, base, steps, tolerance, per_input)
