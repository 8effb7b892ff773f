"""Structure of two versions side by side: layers added / removed / changed (by name, type and
shape), parameters, non-zero parameters (a magnitude-pruned copy keeps its shapes but not its
values), dtypes, FLOPs per input (the layer table's counter, `explain.structure.layers`) and
size on disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.structure.layers import build_layer_table


@in_model_process
def parameter_summary(model: LoadedModel) -> dict[str, Any]:
    """Counts of ``model``'s distinct parameters (a shared tensor once): ``parameters``,
    ``nonzero``, ``dtypes`` (sorted names) and ``shapes``: module name -> {parameter name: shape}."""
    module = model.module
    seen: dict[int, torch.Tensor] = {}
    shapes: dict[str, dict[str, list[int]]] = {}
    for name, sub in module.named_modules():
        own = dict(sub.named_parameters(recurse=False))
        if own:
            shapes[name] = {p_name: [int(d) for d in p.shape] for p_name, p in own.items()}
        for p in own.values():
            seen[id(p)] = p
    with torch.no_grad():
        nonzero = sum(int(torch.count_nonzero(p)) for p in seen.values())
    return {"parameters": int(sum(p.numel() for p in seen.values())), "nonzero": int(nonzero),
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in seen.values()}), "shapes": shapes}


@dataclass
class ModelStructure:
    """One version's side of the structure table.

    Attributes:
        layers: module name -> ``{"type", "output_shape", "parameters": {name: shape}}`` (the model itself left out).
        flops: FLOPs of one input's forward pass (None where the format hides them).
        size: bytes of the file on disk (None when unknown).
    """

    parameters: int
    nonzero_parameters: int
    dtypes: list[str]
    flops: int | None
    size: int | None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)


def describe_structure(model: LoadedModel, inputs: np.ndarray, size: int | None = None) -> ModelStructure:
    """``model``'s `ModelStructure`, its FLOPs measured on the first of ``inputs`` [N, ...]."""
    summary = parameter_summary(model)
    table = build_layer_table(model, np.asarray(inputs)[:1])
    layers: dict[str, dict[str, Any]] = {}
    for row in table.rows:
        if row.name:
            layers[row.name] = {"type": row.type,
                                "output_shape": None if row.output_shape is None else list(row.output_shape),
                                "parameters": summary["shapes"].get(row.name, {})}
    flops = None if table.total_flops is None or not table.batch_size else int(table.total_flops) // table.batch_size
    return ModelStructure(parameters=summary["parameters"], nonzero_parameters=summary["nonzero"],
                          dtypes=summary["dtypes"], flops=flops, size=size, layers=layers)


def layer_text(layer: dict[str, Any] | None) -> str | None:
    """One layer as a table cell: ``Linear [4, 8] → [N, 8]`` (its weight's shape, its output's)."""
    if layer is None:
        return None
    weights = ", ".join(f"{k} {v}" for k, v in layer["parameters"].items())
    out = f" → {layer['output_shape']}" if layer.get("output_shape") is not None else ""
    return f"{layer['type']}{' (' + weights + ')' if weights else ''}{out}"


def layers_changed(a: ModelStructure, b: ModelStructure) -> list[dict[str, Any]]:
    """Layers only in A (``removed``), only in B (``added``), or in both with another type,
    parameter shapes or output shape (``changed``): ``{name, change, a, b}`` (`layer_text` of each
    side, None where absent), in A's layer order, then B's new layers."""
    out = []
    for name in [*a.layers, *(n for n in b.layers if n not in a.layers)]:
        la, lb = a.layers.get(name), b.layers.get(name)
        if la == lb:
            continue
        change = "added" if la is None else "removed" if lb is None else "changed"
        out.append({"name": name, "change": change, "a": layer_text(la), "b": layer_text(lb)})
    return out


@dataclass
class StructureChange:
    a: ModelStructure
    b: ModelStructure

    @property
    def layers_changed(self) -> list[dict[str, Any]]:
        return layers_changed(self.a, self.b)

    def table(self) -> list[dict[str, Any]]:
        """Rows ``{measure, a, b}``: parameters, non-zero parameters, dtypes, FLOPs, size on disk."""
        def row(measure: str, key: str) -> dict[str, Any]:
            va, vb = getattr(self.a, key), getattr(self.b, key)
            if isinstance(va, list):
                va, vb = ", ".join(va), ", ".join(vb)
            return {"measure": measure, "a": va, "b": vb}

        return [row("parameters", "parameters"), row("non-zero parameters", "nonzero_parameters"),
                row("dtype", "dtypes"), row("FLOPs per input", "flops"), row("size on disk (bytes)", "size")]
