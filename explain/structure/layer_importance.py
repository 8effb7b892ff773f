"""Which layers matter: layer attribution ranking and Grad-CAM.

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
``<pad>`` (id 0) except the first (``<cls>``), which is kept so attention has
a key to attend to.

Both need hooks on the layers: they run on eager models and on ``.pt2``
programs with a dynamic batch (unflattened into their module hierarchy; a
layer whose unflattened form returns more than one value is not scored), not
on TorchScript.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explain.errors import IncompatibleInput
from explain.kernels import no_mha_fastpath
from explain.model import LoadedModel
from explain.structure.layers import module_depth
from explain.structure.module_probe import forward_hooks

#: modules that are identities at inference or hold no computation of their own
_SKIP_TYPES = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "ModuleList", "ModuleDict"}


def _module_types(model: LoadedModel, module: nn.Module) -> dict[str, str]:
    """name -> class name; for an unflattened ``.pt2`` the names recorded in its graph."""
    if model.format == "export":
        from explain.structure.module_probe import node_module_paths

        types: dict[str, str] = {}
        for node in model.module.graph.nodes:
            for path, type_name in node_module_paths(node):
                types.setdefault(path, type_name)
        return types
    return {name: type(m).__name__ for name, m in module.named_modules()}


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


def hookable_module(model: LoadedModel, what: str) -> nn.Module:
    """A module whose layers accept hooks: the eager model, or a ``.pt2`` program
    unflattened back into its module hierarchy (``torch.export.unflatten``).

    Raises:
        IncompatibleInput: TorchScript (no hooks) or a ``.pt2`` with a fixed batch
            size (the attribution batches cannot be fed to it).
    """
    if model.format == "export" and model.exported_program is not None and not model.fixed_batch_size:
        return torch.export.unflatten(model.exported_program)
    if not model.is_eager or isinstance(model.module, torch.jit.ScriptModule):
        why = ("a .pt2 exported with a fixed batch size" if model.format == "export"
               else f"{model.format} files")
        raise IncompatibleInput(
            f"{what} needs hooks on the model's layers, which {why} cannot give.",
            "Load the weights (safetensors or a state-dict checkpoint), or a .pt2 with a dynamic batch.",
        )
    return model.module


def _observe_layers(module: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, torch.Tensor | None]]:
    """name -> (calls, last output tensor or None if not a single tensor)."""
    seen: dict[str, tuple[int, torch.Tensor | None]] = {}

    def make_hook(name):
        def hook(_m, _a, out):
            calls = seen.get(name, (0, None))[0] + 1
            seen[name] = (calls, out.detach() if isinstance(out, torch.Tensor) else None)

        return hook

    with forward_hooks(module, make_hook), no_mha_fastpath(), torch.no_grad():
        module(x)
    return seen


def candidate_layers(model: LoadedModel, inputs: np.ndarray, depth: int = 2) -> list[str]:
    """Layers that can be scored: single-tensor float output, run once, at ``depth``
    (or leaves above it); dropout and containers excluded."""
    module = hookable_module(model, "Layer importance")
    return _candidates(module, model.as_tensor(inputs[:1]), depth, _module_types(model, module))


def importance_unavailable_reason(model: LoadedModel) -> str | None:
    """Why layer importance / Grad-CAM cannot run on ``model`` (None when they can)."""
    try:
        hookable_module(model, "Layer importance")
    except IncompatibleInput as exc:
        return exc.message
    return None


def _candidates(module: nn.Module, x: torch.Tensor, depth: int, types: dict[str, str]) -> list[str]:
    seen = _observe_layers(module, x)
    modules = dict(module.named_modules())
    out = []
    for name, m in modules.items():
        d = block_depth(name, modules)
        if not name or types.get(name, type(m).__name__) in _SKIP_TYPES or d > depth:
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
    """Zeros, or for text all ``<pad>`` but the first token."""
    if model.modality == "text":
        b = torch.zeros_like(x)
        b[:, 0] = x[:, 0]
        return b
    return torch.zeros_like(x)


def compute_layer_importance(
    model: LoadedModel,
    inputs: np.ndarray,
    layers: list[str] | None = None,
    depth: int = 2,
    steps: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> LayerImportance:
    """Rank layers by LayerIntegratedGradients attribution to the predicted class."""
    from captum.attr import LayerIntegratedGradients

    module = hookable_module(model, "Layer importance")
    x = model.as_tensor(inputs)
    layers = layers if layers is not None else _candidates(module, x[:1], depth, _module_types(model, module))
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
            text = str(exc).splitlines()[0]
            skipped[name] = ("its output is modified in place by the next operation" if "in-place" in text
                             else text[:160])
            continue
        finally:
            if progress:
                progress(i + 1, len(layers))
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


def grad_cam_layers(model: LoadedModel, inputs: np.ndarray) -> list[str]:
    """Modules with a spatial (N, C, H, W) output that run once: Grad-CAM targets,
    shallowest first and, within a depth, the last one first (the usual choice)."""
    module = hookable_module(model, "Grad-CAM")
    if model.modality != "image":
        raise IncompatibleInput("Grad-CAM needs an image model.")
    seen = _observe_layers(module, model.as_tensor(inputs[:1]))
    names = [n for n, (calls, t) in seen.items()
             if n and calls == 1 and t is not None and t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1]
    order = {n: i for i, n in enumerate(dict(module.named_modules()))}
    return sorted(names, key=lambda n: (module_depth(n), -order.get(n, 0)))


def compute_grad_cam(model: LoadedModel, inputs: np.ndarray, layer: str, target: np.ndarray | int | None = None) -> np.ndarray:
    """Grad-CAM of ``layer`` upsampled to the input size: [N, H, W] in [0, 1] per input.

    Args:
        target: class per input, one class for all, or None for the predicted class.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    module = hookable_module(model, "Grad-CAM")
    modules = dict(module.named_modules())
    if layer not in modules:
        raise IncompatibleInput(f"The model has no layer {layer!r}.")
    x = model.as_tensor(inputs)
    if target is None:
        target = model.predict_logits(x).argmax(axis=1)
    t = torch.as_tensor(np.broadcast_to(np.asarray(target), (x.shape[0],)).copy(), device=x.device)
    cam = LayerGradCam(module, modules[layer])
    with no_mha_fastpath():
        attr = cam.attribute(x, target=t, relu_attributions=True)  # [N, 1, h, w]
    up = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    up = up.clamp_min(0)
    peak = up.reshape(up.shape[0], -1).amax(1).clamp_min(1e-12)[:, None, None]
    return (up / peak).cpu().numpy()
