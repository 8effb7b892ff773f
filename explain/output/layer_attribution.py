"""Attribution to one hidden layer: how much each unit of that layer's output mattered.

Layer integrated gradients (Captum ``LayerIntegratedGradients``) integrates
along the straight path between the layer's output on a baseline input and on
the real input; layer conductance (``LayerConductance``) spreads the input's
integrated gradients over the layer's units. Both sum (up to the integration
error) to f(x) − f(baseline) for the target logit — exactly only for a layer every path
from the input to the output goes through: an error above `LAYER_TOLERANCE` is flagged
(`LayerAttribution.completeness_text`).

Only eager models (weights rebuilt from a known architecture) are offered
(`LoadedModel.hookable_module` with ``exported=False``): the layer list skips
modules by their Python type, which an unflattened ``.pt2`` does not keep;
TorchScript and ``.pt2`` graphs are refused with a reason.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explain.attribution import COMPLETENESS_TOLERANCE, completeness_text
from explain.errors import IncompatibleInput, UsageError
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.baselines import text_reference
from explain.output.layer_importance import SKIPPED_LAYER_TYPES

LAYER_METHODS = ("integrated_gradients", "conductance")
#: the completeness error above which a layer attribution is flagged.
LAYER_TOLERANCE = COMPLETENESS_TOLERANCE
#: what to do about it: the integration, or a path around the layer (a skip connection) that
#: no number of steps attributes to it.
LAYER_REMEDY = "raise steps, or a path bypasses this layer (a skip connection)"


@dataclass
class LayerAttribution:
    """Attributions to one layer's output, for a batch.

    Attributes:
        layer: the module's qualified name.
        method: ``integrated_gradients`` | ``conductance``.
        values: [N, *layer output shape] attribution per unit.
        display: what to draw per input: ``spatial`` [N, H', W'] (channels
            summed), ``tokens`` [N, L] (features summed) or ``units`` [N, U].
        kind: ``spatial`` | ``tokens`` | ``units``.
        target: [N] the explained class.
        output, base_value: [N] f(x) and f(baseline) for the target.
        completeness_error: [N] |Σ values − (f(x) − f(b))| / |f(x) − f(b)|.
        steps: integration steps.
        seconds: wall time.
    """

    layer: str
    method: str
    values: np.ndarray
    display: np.ndarray
    kind: str
    target: np.ndarray
    output: np.ndarray
    base_value: np.ndarray
    completeness_error: np.ndarray
    steps: int
    seconds: float

    def completeness_text(self, index: int = 0) -> tuple[str, bool]:
        """Input ``index``'s completeness error, flagged above `LAYER_TOLERANCE` (`explain.attribution.completeness_text`)."""
        return completeness_text(float(self.completeness_error[index]), LAYER_TOLERANCE, LAYER_REMEDY)


@dataclass
class LayerChoices:
    """Which layers `explain_layer` can attribute to, and why the others cannot.

    Attributes:
        attributable: layer names in execution order.
        skipped: layer name -> the reason it is not offered (one short phrase).
    """

    attributable: list[str]
    skipped: dict[str, str]


#: reasons a layer is not offered, as `LayerChoices.skipped` words them.
NOT_ONE_TENSOR = "its output is not one float tensor"
RUNS_TWICE = "it runs more than once in one forward pass (a shared module)"
CHANGED_IN_PLACE = "its output is changed in place by the next operation (e.g. an in-place ReLU)"
IN_PLACE = "it overwrites its input in place (no output of its own)"


@in_model_process
def classify_layers(model: LoadedModel, example: np.ndarray) -> LayerChoices:
    """Run ``example`` once and sort the layers into attributable and skipped, with reasons.

    A layer is attributable when its output is one float tensor, it runs once,
    and nothing changes that output in place afterwards (Captum replaces the
    output with a leaf that requires grad; an in-place op on it would fail).
    Attention modules, containers, in-place modules and `SKIPPED_LAYER_TYPES`
    are not considered at all.

    Args:
        example: a model-ready batch of one input ([1, ...]).

    Raises:
        IncompatibleInput: the model's layers cannot be hooked (not an eager model).
    """
    module = model.hookable_module("Layer attribution", exported=False)
    outputs: dict[str, tuple[Any, int]] = {}  # name -> (output, its version counter when returned)
    calls: dict[str, int] = {}
    inside_attention = {n for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)}

    def hook(name):
        def record(_m, _i, out):
            calls[name] = calls.get(name, 0) + 1
            outputs.setdefault(name, (out, out._version if isinstance(out, torch.Tensor) else 0))
        return record

    in_place = [name for name, sub in module.named_modules() if name and getattr(sub, "inplace", False)]
    handles = []
    try:
        for name, sub in module.named_modules():
            # attention modules return (output, weights) and their projections never run on their own
            if (name and type(sub).__name__ not in SKIPPED_LAYER_TYPES and not isinstance(sub, nn.MultiheadAttention)
                    and not getattr(sub, "inplace", False)
                    and not any(name.startswith(p + ".") for p in inside_attention)):
                handles.append(sub.register_forward_hook(hook(name)))
        with torch.no_grad():
            model.predict_logits(example)
    finally:
        for h in handles:
            h.remove()
    choices = LayerChoices([], dict.fromkeys(in_place, IN_PLACE))
    for name, (out, version) in outputs.items():
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            choices.skipped[name] = NOT_ONE_TENSOR
        elif calls[name] > 1:
            choices.skipped[name] = RUNS_TWICE
        elif out._version != version:
            choices.skipped[name] = CHANGED_IN_PLACE
        else:
            choices.attributable.append(name)
    return choices


def _baseline(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Zeros for images and tabular; for text, every real token becomes ``<unk>`` and padding
    stays padding (the input's own first token kept when the spec has a ``cls_token``).

    (All-padding text would mask every attention key.)
    """
    if model.modality != "text":
        return torch.zeros_like(x)
    return text_reference(x, model.spec, "unk", keep_first="input" if model.spec.cls_token else None)


@in_model_process
def explain_layer(model: LoadedModel, inputs: np.ndarray, layer: str, target: Any = None,
                  method: str = "integrated_gradients", steps: int = 32) -> LayerAttribution:
    """Attribute the ``target`` logit to the output units of ``layer``.

    Raises:
        UsageError: unknown method or steps < 2.
        IncompatibleInput: not an eager model, or no such layer.
    """
    from captum.attr import LayerConductance, LayerIntegratedGradients

    from explain.output.methods.common import resolve_targets

    if method not in LAYER_METHODS:
        raise UsageError(f"Unknown layer method {method!r}. Use one of {', '.join(LAYER_METHODS)}.")
    if method == "conductance" and model.modality == "text":
        raise IncompatibleInput(
            "Layer conductance interpolates the input itself, which token ids cannot be.",
            "Use layer integrated gradients for text models.",
        )
    if steps < 2:
        raise UsageError(f"steps must be at least 2, got {steps}.")
    module = model.hookable_module("Layer attribution", exported=False)
    modules = dict(module.named_modules())
    if layer not in modules or not layer:
        raise IncompatibleInput(f"The model has no layer named {layer!r}.")
    start = time.perf_counter()
    x = model.as_tensor(inputs)
    targets = resolve_targets(model, x, target)
    t = torch.as_tensor(targets, device=x.device)
    ref = _baseline(model, x)
    if method == "integrated_gradients":
        algo = LayerIntegratedGradients(module, modules[layer])
        attr = algo.attribute(x, baselines=ref, target=t, n_steps=steps)
    else:
        algo = LayerConductance(module, modules[layer])
        attr = algo.attribute(x, baselines=ref, target=t, n_steps=steps)
    values = attr.detach().float().cpu().numpy()  # [N, *layer output]
    rows = np.arange(len(targets))
    output = model.predict_logits(x)[rows, targets].astype(np.float64)
    base = model.predict_logits(ref)[rows, targets].astype(np.float64)
    total = values.reshape(len(values), -1).sum(axis=1)
    delta = output - base
    err = np.abs(total - delta) / np.maximum(np.abs(delta), 1e-6)
    display, kind = display_values(values, model.modality)
    return LayerAttribution(layer, method, values, display, kind, targets, output, base, err, steps,
                            time.perf_counter() - start)


def display_values(values: np.ndarray, modality: str) -> tuple[np.ndarray, str]:
    """Reduce layer attributions to what is drawn per input.

    [N, C, H, W] -> spatial [N, H, W] (channels summed); text [N, L, D] ->
    tokens [N, L] (features summed); anything else -> units [N, U] (flattened).
    """
    if values.ndim == 4:
        return values.sum(axis=1), "spatial"
    if values.ndim == 3 and modality == "text":
        return values.sum(axis=2), "tokens"
    return values.reshape(len(values), -1), "units"
