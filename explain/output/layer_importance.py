"""Which layers matter: layer attribution ranking and Grad-CAM (beside `explain.output.layer_attribution`,
attribution to one chosen layer: layer attribution lives in `explain.output` only).

Layer importance uses Captum's ``LayerIntegratedGradients`` on each candidate
layer, target = the predicted class. It integrates the gradient along a
straight path from the layer's output on a baseline input to its output on
the real input, so by completeness the sum of a layer's attributions is the
change of the target logit when that layer's output is swapped from baseline
to real. Scores:

- ``magnitude``: mean over inputs of Σ|attribution| (how much signal flows
  through the layer, the ranking key);
- ``total``: mean over inputs of Σ attribution (the signed logit change).

Baselines: zeros for image and tabular inputs; for text every token is
``<pad>`` except the first (``<cls>``), which is kept so attention has a key to
attend to (`explain.output.baselines.text_reference`, ``pad`` with each input's
own first token).

Grad-CAM lives here too, once: `grad_cam_layers` is the one list of layers it
can run on (the first is the default), `grad_cam_rows` the one computation.
The Structure page shows `compute_grad_cam` (maps normalised to [0, 1] per
input); the ``grad_cam`` attribution method
(`explain.output.methods.grad_cam`) runs `grad_cam_rows` through the engine
and keeps the raw maps. `SKIPPED_LAYER_TYPES` is the one list of module types
no layer analysis offers.

All need hooks on the layers (`LoadedModel.hookable_module`): they run on
eager models and on ``.pt2`` programs with a dynamic batch (unflattened into
their module hierarchy; a layer whose unflattened form returns more than one
value is not scored), not on TorchScript.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explain.errors import IncompatibleInput, UsageError, one_line
from explain.kernels import no_mha_fastpath
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.baselines import text_reference
from explain.output.engine import pad_rows
from explain.progress import ProgressFn, report_progress
from explain.structure.layers import module_depth
from explain.structure.module_probe import forward_hooks, node_module_paths

#: module types no layer analysis offers (importance, Grad-CAM, layer attribution): identities
#: at inference, or containers with no computation of their own. Class names, so that an
#: unflattened ``.pt2`` (whose modules are all ``InterpreterModule``s) is judged by its graph's names.
SKIPPED_LAYER_TYPES = frozenset(
    {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "ModuleList", "ModuleDict"}
)


@in_model_process
def module_types(model: LoadedModel, module: nn.Module | None = None) -> dict[str, str]:
    """Module name -> class name of a hookable model (``module``: its `LoadedModel.hookable_module`);
    for a ``.pt2`` the names recorded in its graph (its unflattened modules are all ``InterpreterModule``s)."""
    if model.format == "export":
        types: dict[str, str] = {}
        for node in model.module.graph.nodes:
            for path, type_name in node_module_paths(node):
                types.setdefault(path, type_name)
        return types
    return {name: type(m).__name__ for name, m in (module or model.module).named_modules()}


@dataclass
class LayerImportance:
    """Importance of each candidate layer for the predicted class.

    Attributes:
        layers: layer names, most important first.
        magnitude: [L] mean Σ|attribution| per layer.
        total: [L] mean Σ attribution per layer (signed logit change).
        target: [N] the explained class per input.
        steps: integration steps.
        skipped: layer name -> why it was not scored.
    """

    layers: list[str]
    magnitude: np.ndarray
    total: np.ndarray
    target: np.ndarray
    steps: int
    skipped: dict[str, str] = field(default_factory=dict)


def _observe_layers(module: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, torch.Tensor | None]]:
    """name -> (calls, last output tensor, or None if not a single tensor or the first input is not a tensor)."""
    seen: dict[str, tuple[int, torch.Tensor | None]] = {}

    def make_hook(name):
        def hook(_m, args, out):
            calls = seen.get(name, (0, None))[0] + 1
            # Captum finds a layer's device from its first input: a module called with something else
            # first (an unflattened .pt2 passes the symbolic batch size) cannot be attributed or mapped
            hookable = isinstance(out, torch.Tensor) and (not args or isinstance(args[0], torch.Tensor))
            seen[name] = (calls, out.detach() if hookable else None)

        return hook

    with forward_hooks(module, make_hook), no_mha_fastpath(), torch.no_grad():
        module(x)
    return seen


@in_model_process
def importance_unavailable_reason(model: LoadedModel) -> str | None:
    """Why layer importance / Grad-CAM cannot run on ``model`` (None when they can)."""
    return model.hook_incompatibility("Layer importance")


def _candidates(module: nn.Module, x: torch.Tensor, depth: int, types: dict[str, str]) -> list[str]:
    seen = _observe_layers(module, x)
    modules = dict(module.named_modules())
    out = []
    for name, m in modules.items():
        d = block_depth(name, modules)
        if not name or types.get(name, type(m).__name__) in SKIPPED_LAYER_TYPES or d > depth:
            continue
        if d < depth and any(True for _ in m.children()):
            continue
        calls, t = seen.get(name, (0, None))
        if calls == 1 and t is not None and t.is_floating_point():
            out.append(name)
    return out


def block_depth(name: str, modules: dict[str, nn.Module]) -> int:
    """Depth not counting containers: ``encoder.layers.0`` is at depth 2."""
    parts = name.split(".") if name else []
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return sum(1 for p in prefixes if not isinstance(modules.get(p), (nn.ModuleList, nn.ModuleDict)))


def baseline_for(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Zeros, or for text all ``<pad>`` but each input's own first token."""
    if model.modality == "text":
        return text_reference(x, model.spec, "pad", keep_first="input")
    return torch.zeros_like(x)


@in_model_process
def compute_layer_importance(
    model: LoadedModel,
    inputs: np.ndarray,
    layers: list[str] | None = None,
    depth: int = 2,
    steps: int = 16,
    progress: ProgressFn | None = None,
) -> LayerImportance:
    """Rank layers by LayerIntegratedGradients attribution to the predicted class."""
    from captum.attr import LayerIntegratedGradients

    module = model.hookable_module("Layer importance")
    x = model.as_tensor(inputs)
    layers = layers if layers is not None else _candidates(module, x[:1], depth, module_types(model, module))
    if not layers:
        raise IncompatibleInput("No layer of this model can be scored (none has a single tensor output).")
    target = torch.as_tensor(model.predict_logits(x).argmax(axis=1), device=x.device)
    baseline = baseline_for(model, x)
    modules = dict(module.named_modules())
    scored, mags, tots, skipped = [], [], [], {}
    for i, name in enumerate(layers):
        lig = LayerIntegratedGradients(module, modules[name])
        try:
            with no_mha_fastpath():
                attr = lig.attribute(x, baselines=baseline, target=target, n_steps=int(steps),
                                     internal_batch_size=max(1, 64 // max(1, x.shape[0])) * x.shape[0])
        except (RuntimeError, ValueError, AssertionError) as exc:
            text = one_line(exc, typed=False)
            skipped[name] = ("its output is modified in place by the next operation" if "in-place" in text
                             else text[:160])
            continue
        finally:
            report_progress(progress, i + 1, len(layers))
        attr = attr[0] if isinstance(attr, (tuple, list)) else attr
        flat = attr.detach().reshape(attr.shape[0], -1).float()  # [N, D]
        scored.append(name)
        mags.append(float(flat.abs().sum(1).mean()))
        tots.append(float(flat.sum(1).mean()))
    order = np.argsort(-np.asarray(mags)) if mags else np.array([], dtype=int)
    return LayerImportance(
        layers=[scored[i] for i in order], magnitude=np.asarray(mags)[order], total=np.asarray(tots)[order],
        target=target.cpu().numpy(), steps=int(steps), skipped=skipped,
    )


@in_model_process
def grad_cam_layers(model: LoadedModel, inputs: np.ndarray) -> list[str]:
    """The one list of Grad-CAM layers: modules with a spatial (N, C, H, W) output, H·W > 1,
    that run once and are not of a `SKIPPED_LAYER_TYPES` type; the smallest maps first (the last
    stage, Grad-CAM's usual layer, not the stem), then shallowest and, within a depth, the last
    one first. The first is the default layer.

    Raises:
        IncompatibleInput: no hooks on this model's layers, or not an image model.
    """
    module = model.hookable_module("Grad-CAM")
    if model.modality != "image":
        raise IncompatibleInput("Grad-CAM needs an image model.")
    seen = _observe_layers(module, model.as_tensor(inputs[:1]))
    types = module_types(model, module)
    modules = dict(module.named_modules())
    names = [n for n, (calls, t) in seen.items()
             if n and calls == 1 and t is not None and t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1
             and types.get(n, type(modules.get(n)).__name__) not in SKIPPED_LAYER_TYPES]
    order = {n: i for i, n in enumerate(modules)}
    return sorted(names, key=lambda n: (int(seen[n][1].shape[-1] * seen[n][1].shape[-2]), module_depth(n),
                                        -order.get(n, 0)))


@in_model_process
def grad_cam_layer(model: LoadedModel, inputs: np.ndarray, layer: str = "") -> str:
    """``layer`` checked against `grad_cam_layers`, or the first of them when empty.

    Raises:
        UsageError: no such module, or one Grad-CAM cannot run on (not spatial, run twice, ...).
        IncompatibleInput: the model has no Grad-CAM layer at all.
    """
    names = grad_cam_layers(model, inputs)
    if not layer:
        if not names:
            raise IncompatibleInput("Grad-CAM needs a layer with a spatial output; this model has none.",
                                    "Use integrated_gradients or occlusion.")
        return names[0]
    if layer in names:
        return layer
    if layer not in dict(model.hookable_module("Grad-CAM").named_modules()):
        raise UsageError(f"The model has no layer {layer!r}.")
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise UsageError(f"Grad-CAM cannot run on layer {layer!r}: its output is not one spatial map, "
                     f"or the layer runs more than once.", f"Choose one of: {shown}.")


@in_model_process
def grad_cam_rows(model: LoadedModel, x: torch.Tensor, layer: str, targets: torch.Tensor,
                  normalise: bool = False) -> torch.Tensor:
    """Grad-CAM maps of ``layer`` on one chunk of model-ready images: [n, H, W], float, >= 0.

    ``captum.attr.LayerGradCam``: ReLU of the layer's channels weighted by their mean
    gradient of the target logit, bilinearly upsampled to the input's H x W. The chunk is
    padded to a batch size the model may run (`LoadedModel.padded_rows`); the padding rows'
    maps are dropped.

    Args:
        x: [n, C, H, W] on the model's device, n no more than the model's batch limit.
        layer: one of `grad_cam_layers` (see `grad_cam_layer`).
        targets: [n] int64 class per image, on the same device.
        normalise: divide each map by its peak (range [0, 1], as the Structure page shows
            it); False: the raw maps, as the attribution method reports them.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    module = model.hookable_module("Grad-CAM")
    n = x.shape[0]
    xp, tp = pad_rows(model.padded_rows(n), x, targets)
    cam = LayerGradCam(module, dict(module.named_modules())[layer])
    with torch.enable_grad(), no_mha_fastpath():
        maps = cam.attribute(xp, target=tp, relu_attributions=True)  # [n', 1, h, w]
    up = LayerAttribution.interpolate(maps.detach()[:n], tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    if not normalise:
        return up
    up = up.clamp_min(0)
    peak = up.reshape(n, -1).amax(1).clamp_min(1e-12)[:, None, None]
    return up / peak


@in_model_process
def compute_grad_cam(model: LoadedModel, inputs: np.ndarray, layer: str, target: np.ndarray | int | None = None) -> np.ndarray:
    """Grad-CAM of ``layer`` upsampled to the input size: [N, H, W] in [0, 1] per input.

    Args:
        layer: one of `grad_cam_layers`.
        target: class per input, one class for all, or None for the predicted class.
    """
    layer = grad_cam_layer(model, inputs, layer)
    x = model.as_tensor(inputs)
    if target is None:
        target = model.predict_logits(x).argmax(axis=1)
    t = torch.as_tensor(np.broadcast_to(np.asarray(target), (x.shape[0],)).copy(), device=x.device)
    step = model.chunk_limit(x.shape[0])
    maps = [grad_cam_rows(model, x[i:i + step], layer, t[i:i + step], normalise=True)
            for i in range(0, x.shape[0], step)]
    return torch.cat(maps).cpu().numpy()
