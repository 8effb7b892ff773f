"""Report sections that wrap the analysis modules: structure, attention, training, evolution.

Each builder calls the library (`explain.structure`, `explain.attention`,
`explain.history` / `explain.findings`, `explain.evolution`) and its figure
helpers (`explain.viz.*`), and puts every number it shows in ``data``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import IncompatibleInput
from .model import LoadedModel
from .report import Section, escape, format_number, round_data, table_html

#: rows of the layer table (a long model is summarised after this many).
MAX_LAYER_ROWS = 80
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


# -- structure -----------------------------------------------------------------------
def describe_structure(model: LoadedModel, example: np.ndarray) -> dict[str, Any]:
    """Layers of ``model`` on one example: ``{"layers": [...], "total_flops", "total_parameters"}``.

    Args:
        example: a model-ready batch of one input ([1, ...]).
    """
    from .structure import describe_layers

    layers = [dict(layer) for layer in describe_layers(model, example)]
    root = next((layer for layer in layers if layer.get("name") in ("", "(model)", "model")), None)
    flops = root.get("flops") if root else None
    if flops is None:
        top = [layer for layer in layers if layer.get("depth", 1) == 1] or layers
        known = [layer.get("flops") for layer in top if layer.get("flops") is not None]
        flops = int(sum(known)) if known else None
    return {"layers": layers, "total_flops": flops, "total_parameters": model.parameter_count()}


def build_structure_section(model: LoadedModel, structure: dict[str, Any]) -> Section:
    layers = structure["layers"]
    rows = [{
        "name": layer.get("name") or "(model)", "type": layer.get("type", ""),
        "output_shape": _shape_text(layer.get("output_shape")),
        "parameters": layer.get("parameters"), "flops": layer.get("flops"),
    } for layer in layers]
    shown = rows[:MAX_LAYER_ROWS]
    more = (f'<p class="muted">… and {len(rows) - MAX_LAYER_ROWS} more layers (all are in the embedded data).</p>'
            if len(rows) > MAX_LAYER_ROWS else "")
    intro = (f"<p>{len(rows)} layers · {format_number(structure['total_parameters'])} parameters · "
             f"{format_number(structure['total_flops'])} FLOPs per sample (a multiply-add counts 2).</p>")
    body = intro + table_html(shown, ["name", "type", "output_shape", "parameters", "flops"],
                              ["layer", "type", "output shape", "parameters", "FLOPs"],
                              numeric=("parameters", "flops")) + more
    data = {"layers": [{k: r[k] for k in ("name", "type", "output_shape", "parameters", "flops")} for r in rows],
            "total_parameters": structure["total_parameters"], "total_flops": structure["total_flops"]}
    return Section("Structure", body=body, data=round_data(data))


def _shape_text(shape: Any) -> str:
    if shape is None:
        return "—"
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return "; ".join(_shape_text(s) for s in shape)
    if isinstance(shape, (list, tuple)):
        return "×".join(str(d) for d in shape)
    return str(shape)


# -- attention ---------------------------------------------------------------------------
def has_attention(model: LoadedModel) -> bool:
    """True when the model has attention layers the attention view can read."""
    module = model.module
    if isinstance(module, nn.Module) and not isinstance(module, torch.jit.ScriptModule):
        if any(isinstance(m, nn.MultiheadAttention) for m in module.modules()):
            return True
    return model.modality == "text"


def build_attention_section(model: LoadedModel, inputs: np.ndarray | None, example: np.ndarray) -> Section:
    """Attention maps (last layer, mean over heads) for the first input, and entropy per layer and head."""
    from . import attention as attn_mod
    from .viz import structure as viz_structure

    x = inputs[:1] if inputs is not None else example
    maps = attn_mod.attention_maps(model, x)
    weights = np.asarray(maps.weights, dtype=np.float64)  # [layer, batch, head, query, key]
    layer_names = list(maps.layer_names)
    tokens = list(getattr(maps, "tokens", None) or [])
    n_layers, _, n_heads, n_q, n_k = weights.shape
    p = np.clip(weights[:, 0], 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=-1).mean(axis=-1)  # [layer, head]
    figures = [viz_structure.attention_figure(weights[layer, 0].mean(axis=0), tokens, title=f"{layer_names[layer]} · mean of {n_heads} heads")
               for layer in range(n_layers)]
    rows = [{"layer": layer_names[i], **{f"head {h}": float(entropy[i, h]) for h in range(n_heads)}} for i in range(n_layers)]
    body = (f"<p>{n_layers} attention layers × {n_heads} heads on input #0 ({n_q} query × {n_k} key positions). "
            "The table gives each head's mean attention entropy in nats (low: focused on few tokens).</p>"
            + table_html(rows, numeric=[k for k in rows[0] if k != "layer"]))
    data = {"layers": layer_names, "heads": n_heads, "tokens": tokens, "entropy": entropy}
    return Section("Attention", body=body, figures=figures, data=round_data(data))


# -- training --------------------------------------------------------------------------
def read_training_history(model: LoadedModel, logs: Sequence[Any], checkpoints: Sequence[Any]):
    """The run's history: the logs merged, else the last checkpoint's, else the model's own."""
    from .history import merge_histories, read_checkpoint_history, read_history
    from .report_sections import read_source

    if logs:
        histories = []
        for src in logs:
            name, data = (src if isinstance(src, tuple) else (None, None))
            histories.append(read_history(data, filename=name) if data is not None else read_history(src))
        return merge_histories(histories), "logs"
    if checkpoints:
        name, data = read_source(checkpoints[-1])
        return read_checkpoint_history(data, name), f"checkpoint {name}"
    history = model.extra.get("history")
    if history:
        import io
        import json

        from .history import read_history as _read

        return _read(json.dumps(history).encode(), filename="history.json"), "the model file"
    raise IncompatibleInput("No training log or checkpoint history was given.")


def build_training_section(model: LoadedModel, logs: Sequence[Any], checkpoints: Sequence[Any]) -> Section:
    from .findings import diagnose

    history, origin = read_training_history(model, logs, checkpoints)
    findings = diagnose(history)
    findings.sort(key=lambda f: _SEVERITY_ORDER.get(f.severity, 3))
    notes: list[str] = []
    try:
        figures = training_figures(history, findings)
    except ImportError as exc:  # the figures module is optional: findings and numbers still show
        figures, notes = [], [f"Curves not drawn: {exc}."]
    per_epoch = history.by_epoch()
    final = {c: float(per_epoch[c].dropna().iloc[-1]) for c in per_epoch.columns if per_epoch[c].notna().any()}
    items = "".join(
        f'<li><span class="sev-{escape(f.severity)}">{escape(f.kind)}</span> {escape(f.message)}</li>' for f in findings
    ) or "<li>No findings.</li>"
    lengths = history.series_lengths()
    body = (f"<p>Curves read from {escape(origin)} ({escape(', '.join(history.sources) or history.name)}): "
            f"{len(lengths)} series over {len(per_epoch)} {escape(history.default_x)}s.</p>"
            f'<h3>Findings</h3><ul class="findings">{items}</ul>'
            + table_html([{"series": k, "points": v, "last value": final.get(k)} for k, v in lengths.items()],
                         numeric=("points", "last value")))
    data = {"origin": origin, "sources": list(history.sources), "series": lengths, "final": final,
            "roles": dict(history.roles),
            "findings": [{"kind": f.kind, "severity": f.severity, "message": f.message, "epochs": list(f.epochs)}
                         for f in findings]}
    return Section("Training", body=body, figures=figures, data=round_data(data), notes=notes)


def training_figures(history, findings) -> list:
    """Loss and metric curves with the findings marked (`explain.viz.training`)."""
    from .viz import training as viz_training

    return list(viz_training.curves_figures(history, findings))


# -- checkpoint evolution ----------------------------------------------------------------
def build_evolution_section(model: LoadedModel, checkpoints: Sequence[Any], inputs: np.ndarray | None,
                            method: str | None) -> Section:
    """How weights (and, with inputs, explanations) changed from checkpoint to checkpoint."""
    from . import evolution
    from .viz import training as viz_training

    result = evolution.compare_checkpoints(list(checkpoints), inputs=inputs, method=method)
    rows = [dict(r) for r in result.rows]
    figures = list(viz_training.evolution_figures(result))
    body = table_html(rows, numeric=[k for k in (rows[0] if rows else {}) if k not in ("checkpoint", "name")])
    return Section("Checkpoint evolution", body=body, figures=figures, data=round_data({"checkpoints": rows}))
