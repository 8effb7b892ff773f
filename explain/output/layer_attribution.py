"""Attribution to one hidden layer: how much each unit of that layer's output mattered.

Layer integrated gradients (Captum ``LayerIntegratedGradients``) integrates
along the straight path between the layer's output on a baseline input and on
the real input; layer conductance (``LayerConductance``) spreads the input's
integrated gradients over the layer's units. Both sum (up to the integration
error) to f(x) − f(baseline) for the target logit.

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

from explain.errors import IncompatibleInput, UsageError
from explain.model import LoadedModel
from explain.output.baselines import text_reference
from explain.structure.layer_importance import SKIPPED_LAYER_TYPES

LAYER_METHODS = ("integrated_gradients", "conductance")


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


def attributable_layers(model: LoadedModel, example: np.ndarray) -> list[str]:
    """Layers (execution order) whose output is one tensor on ``example``: the choices for `explain_layer`.

    Args:
        example: a model-ready batch of one input ([1, ...]).
    """
    module = model.hookable_module("Layer attribution", exported=False)
    seen: dict[str, bool] = {}
    calls: dict[str, int] = {}
    inside_attention = {n for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)}

    def hook(name):
        def record(_m, _i, out):
            calls[name] = calls.get(name, 0) + 1
            seen.setdefault(name, isinstance(out, torch.Tensor) and out.is_floating_point())
        return record

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
    # a module run twice in one forward (a shared activation) has no single output to attribute to
    return [name for name, ok in seen.items() if ok and calls[name] == 1]


def _baseline(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Zeros for images and tabular; for text, every real token becomes ``<unk>`` and padding
    stays padding (the input's own first token kept when the spec has a ``cls_token``).

    (All-padding text would mask every attention key.)
    """
    if model.modality != "text":
        return torch.zeros_like(x)
    return text_reference(x, model.spec, "unk", keep_first="input" if model.spec.cls_token else None)


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


def upsample(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a [h, w] map to [height, width] (to lay it over the input)."""
    h, w = heat.shape
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    return heat[rows][:, cols]
