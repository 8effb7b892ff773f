"""Report sections that wrap the analysis modules: structure, attention, training, evolution.

Each builder calls the library (`explain.structure.layers`, `explain.structure.attention`,
`explain.training.history` / `explain.training.findings`, `explain.training.evolution`) and its figure
helpers (`explain.viz.*`), and puts every number it shows in ``data``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from explain.errors import IncompatibleInput
from explain.finding import sort_findings
from explain.inputs.text import detokenize, real_positions
from explain.model import LoadedModel
from explain.report.document import Section, escape, format_number, round_data, table_html
from explain.structure.layers import FLOPS_COLUMN, SHAPE_COLUMN, build_layer_table, flop_chart_rows, layer_frame
from explain.training.checkpoints import final_checkpoint, read_checkpoints
from explain.training.evolution import compute_checkpoint_drift, compute_weight_changes
from explain.training.findings import diagnose
from explain.training.history import (
    default_log_mode,
    merge_histories,
    read_checkpoint_history,
    read_histories,
    read_history,
)
from explain.viz import structure as viz_structure
from explain.viz import training as viz_training

#: rows of the layer table (a long model is summarised after this many).
MAX_LAYER_ROWS = 80


# -- structure -----------------------------------------------------------------------
def describe_structure(model: LoadedModel, example: np.ndarray) -> dict[str, Any]:
    """Layers of ``model`` on one example: ``{"layers": [...], "table", "total_flops", "total_parameters"}``;
    ``table`` is `explain.structure.layers.layer_frame` of every layer (the pages' one layer table:
    per-input shapes and FLOPs), ``layers`` the rows as `describe_layers` gives them (the FLOPs chart).

    Args:
        example: a model-ready batch of one input ([1, ...]).
    """
    table = build_layer_table(model, example)
    layers = [dict(layer) for layer in table.to_records()]
    root = next((layer for layer in layers if layer.get("name") in ("", "(model)", "model")), None)
    flops = root.get("flops") if root else None
    if flops is None:
        top = [layer for layer in layers if layer.get("depth", 1) == 1] or layers
        known = [layer.get("flops") for layer in top if layer.get("flops") is not None]
        flops = int(sum(known)) if known else None
    frame = layer_frame(table, max_depth=max((row.depth for row in table.rows), default=0))
    return {"layers": layers, "table": frame, "total_flops": flops, "total_parameters": model.parameter_count()}


#: the layer table's columns the report's HTML shows (its data holds all of `LAYER_COLUMNS`).
REPORT_LAYER_COLUMNS = ("layer", "type", SHAPE_COLUMN, "parameters", FLOPS_COLUMN, "FLOP %")


def layer_rows(frame: Any) -> list[dict[str, Any]]:
    """A `layer_frame` as plain rows (None where a value is unknown)."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def build_structure_section(model: LoadedModel, structure: dict[str, Any]) -> Section:
    layers = structure["layers"]
    rows = layer_rows(structure["table"])
    shown = rows[:MAX_LAYER_ROWS]
    more = (f'<p class="muted">… and {len(rows) - MAX_LAYER_ROWS} more layers (all are in the embedded data).</p>'
            if len(rows) > MAX_LAYER_ROWS else "")
    intro = (f"<p>{len(rows)} layers · {format_number(structure['total_parameters'])} parameters · "
             f"{format_number(structure['total_flops'])} FLOPs per sample (a multiply-add counts 2).</p>")
    body = intro + table_html(shown, list(REPORT_LAYER_COLUMNS), numeric=("parameters", FLOPS_COLUMN, "FLOP %")) + more
    data = {"layers": rows, "total_parameters": structure["total_parameters"], "total_flops": structure["total_flops"]}
    figures = []
    total = structure["total_flops"]
    charted = flop_chart_rows(layers, total) if total else []
    if charted:
        figures.append(viz_structure.figure_flops(charted, top=15))
    data["flop_chart"] = [row["name"] for row in charted]
    return Section("Structure", body=body, figures=figures, data=round_data(data))


# -- attention ---------------------------------------------------------------------------
def has_attention(model: LoadedModel) -> bool:
    """True when the model has attention layers the attention view can read (cheap, no run)."""
    from explain.structure.attention import attention_unavailable_reason

    return attention_unavailable_reason(model) is None


def build_attention_section(model: LoadedModel, inputs: np.ndarray | None, example: np.ndarray) -> Section:
    """Attention of the first input: per layer the mean over heads, and each head's entropy."""
    from explain.structure.attention import capture_attention

    x = inputs[:1] if inputs is not None else example
    maps = capture_attention(model, x)
    weights = np.asarray(maps.weights, dtype=np.float64)  # [layer, batch, head, query, key]
    n_layers, _, n_heads, n_q, n_k = weights.shape
    tokens, keep = attention_tokens(model, x[0], n_k)
    p = np.clip(weights[:, 0][..., keep, :][..., keep], 1e-12, 1.0)  # [layer, head, q, k] without padding
    entropy = -(p * np.log(p)).sum(axis=-1).mean(axis=-1)  # [layer, head]
    notes = list(maps.notes)
    figures = attention_figures(weights[:, 0], maps.layer_names, [tokens[i] for i in keep], keep)
    rows = [{"layer": maps.layer_names[i], **{f"head {h}": float(entropy[i, h]) for h in range(n_heads)}}
            for i in range(n_layers)]
    body = (f"<p>{n_layers} attention layers × {n_heads} heads on input #0 ({len(keep)} tokens, padding left out). "
            "Each head's mean attention entropy in nats (low: each token attends to few others; "
            f"uniform attention would be {np.log(len(keep)):.2f}).</p>"
            + table_html(rows, numeric=[k for k in rows[0] if k != "layer"]))
    data = {"layers": list(maps.layer_names), "heads": n_heads, "tokens": [tokens[i] for i in keep],
            "entropy": entropy, "source": maps.source}
    return Section("Attention", body=body, figures=figures, data=round_data(data), notes=notes)


def attention_tokens(model: LoadedModel, ids: np.ndarray, n_keys: int) -> tuple[list[str], list[int]]:
    """(one label per key position, the positions an attention view keeps) for one input.

    Text: the tokens, and the positions that are not padding (`explain.inputs.text.real_positions`);
    images whose positions are patches of the picture: ``[CLS]``, ``(0, 0)``, ... by their place on the
    patch grid (`explain.structure.attention.patch_grid`), as the Structure page names them; other
    inputs: the positions' numbers. All but text keep every position. The page and the report both
    cut maps with it.
    """
    if model.modality == "image":
        from explain.structure.attention import patch_grid

        grid = patch_grid(n_keys, model.spec.input_shape)
        if grid is not None:
            return grid.labels(), list(range(n_keys))
    if model.modality != "text":
        return [str(i) for i in range(n_keys)], list(range(n_keys))
    return detokenize(ids, model.spec), real_positions(ids, model.spec)


def attention_figures(weights: np.ndarray, layer_names: Sequence[str], tokens: Sequence[str],
                      keep: Sequence[int], grid: bool = True) -> list:
    """Attention of one input without padding, from `explain.viz.structure`.

    Args:
        weights: [layer, head, query, key] for one input.
        keep: the non-padding positions (the maps are cut to them).
        grid: one layer × head grid; else one map per layer (mean over heads).
    """
    w = weights[:, :, keep][..., keep]  # [layer, head, q, k]
    if grid:
        return [viz_structure.figure_attention_grid(w, list(layer_names), list(tokens))]
    return [viz_structure.figure_attention(w[i].mean(axis=0), list(tokens), title=f"{name} · mean over heads",
                                           height=420)
            for i, name in enumerate(layer_names)]


# -- training --------------------------------------------------------------------------
def read_training_history(logs: Sequence[Any], checkpoints: Sequence[Any], fallback: Any = None):
    """The run's history and where it came from: the logs merged, else the latest checkpoint's, else ``fallback``.

    Args:
        logs: paths, TensorBoard folders or ``(name, bytes)`` pairs.
        checkpoints: paths or ``(name, bytes)`` pairs.
        fallback: a history list/dict kept in the model file (``LoadedModel.extra["history"]``).

    Raises:
        IncompatibleInput: nothing to read.
    """
    if logs:
        return merge_histories(read_histories(logs)), "logs"
    if checkpoints:
        last = final_checkpoint(read_checkpoints(list(checkpoints)))  # the latest holds the longest history
        return read_checkpoint_history(last.data, last.source), f"checkpoint {last.source}"
    if fallback:
        import json

        return read_history(json.dumps(fallback).encode(), filename="history.json"), "the model file"
    raise IncompatibleInput("No training log or checkpoint history was given.")


def read_training_runs(logs: Sequence[Any], checkpoints: Sequence[Any], fallback: Any = None):
    """The runs to draw and where they came from: logs that record the same series are runs to
    compare, one history each (`default_log_mode`, the Training page's default); else one history, as
    `read_training_history` reads it.

    Returns:
        ``(histories, origin)``: one history, or one per log.
    """
    if len(logs) > 1:
        histories = read_histories(logs)
        if default_log_mode(histories) == "runs":
            return histories, "logs"
        return [merge_histories(histories)], "logs"
    history, origin = read_training_history(logs, checkpoints, fallback)
    return [history], origin


def _findings_html(findings) -> str:
    items = "".join(
        f'<li>{f.icon} <span class="sev-{escape(f.severity)}">{escape(f.kind)}</span> {escape(f.message)}</li>'
        for f in findings
    ) or "<li>No findings.</li>"
    return f'<ul class="findings">{items}</ul>'


def _finding_data(f, run: str | None = None) -> dict[str, Any]:
    data = f.to_dict()
    return {"run": run, **data} if run is not None else data


def _warnings_html(histories) -> str:
    """What was read only in part or replaced (a damaged file, a restart, rows averaged down), as the page says it."""
    return "".join(f'<p class="note">⚠️ {escape(w)}</p>' for h in histories for w in h.warnings)


def _series_rows(history) -> tuple[dict[str, int], dict[str, float]]:
    per_epoch = history.by_epoch()
    final = {c: float(per_epoch[c].dropna().iloc[-1]) for c in per_epoch.columns if per_epoch[c].notna().any()}
    return history.series_lengths(), final


def build_training_section(model: LoadedModel, logs: Sequence[Any], checkpoints: Sequence[Any]) -> Section:
    runs, origin = read_training_runs(logs, checkpoints, model.extra.get("history"))
    if len(runs) > 1:
        return _build_runs_section(runs, origin)
    history = runs[0]
    findings = sort_findings(diagnose(history))
    figures = training_figures(history, findings)
    per_epoch = history.by_epoch()
    lengths, final = _series_rows(history)
    body = (f"<p>Curves read from {escape(origin)} ({escape(', '.join(history.sources) or history.name)}): "
            f"{len(lengths)} series over {len(per_epoch)} {escape(history.default_x)}s.</p>"
            + _warnings_html([history]) + f"<h3>Findings</h3>{_findings_html(findings)}"
            + table_html([{"series": k, "points": v, "last value": final.get(k)} for k, v in lengths.items()],
                         numeric=("points", "last value")))
    data = {"origin": origin, "sources": list(history.sources), "series": lengths, "final": final,
            "roles": dict(history.roles), "findings": [_finding_data(f) for f in findings],
            "warnings": list(history.warnings)}
    return Section("Training", body=body, figures=figures, data=round_data(data))


def _build_runs_section(runs, origin: str) -> Section:
    """Several logs of the same series: each a run, drawn in its own colour (`viz.training.figure_runs`),
    with its own findings."""
    names = viz_training.run_names(runs)
    by_run = [sort_findings(diagnose(h)) for h in runs]
    body = (f"<p>Curves read from {escape(origin)}: {len(runs)} runs compared ({escape(', '.join(names))}; the logs "
            "record the same series, so each is a run, drawn in its own colour).</p>" + _warnings_html(runs))
    rows, data_runs = [], []
    for name, h, findings in zip(names, runs, by_run):
        lengths, final = _series_rows(h)
        body += f"<h3>Findings · {escape(name)}</h3>{_findings_html(findings)}"
        rows += [{"run": name, "series": k, "points": v, "last value": final.get(k)} for k, v in lengths.items()]
        data_runs.append({"name": name, "sources": list(h.sources), "series": lengths, "final": final,
                          "roles": dict(h.roles), "findings": [_finding_data(f) for f in findings]})
    body += table_html(rows, numeric=("points", "last value"))
    data = {"origin": origin, "sources": [s for h in runs for s in h.sources], "runs": data_runs,
            "warnings": [w for h in runs for w in h.warnings],
            "findings": [_finding_data(f, name) for name, findings in zip(names, by_run) for f in findings]}
    x = runs[0].default_x
    figures = [viz_training.figure_runs(runs, x=x, height=480, names=names)]
    return Section("Training", body=body, figures=figures, data=round_data(data))


def training_figures(history, findings) -> list:
    """Loss and metric curves with the findings marked (`explain.viz.training`)."""
    return [viz_training.figure_curves(history, findings, height=480)]


# -- checkpoint evolution ----------------------------------------------------------------
def build_evolution_section(model: LoadedModel, checkpoints: Sequence[Any], inputs: np.ndarray | None,
                            steps: int = 32) -> Section:
    """How the weights, and the explanations of ``inputs``, changed from checkpoint to checkpoint."""
    ckpts = read_checkpoints(list(checkpoints))  # oldest first
    change = compute_weight_changes(ckpts)
    figures = [viz_training.figure_weight_changes(change)]
    mean_change = np.nanmean(change.values, axis=0)  # [K-1] over layers
    rows = [{"interval": iv, "mean relative change": float(v),
             "largest": change.layers[int(np.nanargmax(change.values[:, j]))] if np.isfinite(change.values[:, j]).any() else "—"}
            for j, (iv, v) in enumerate(zip(change.intervals, mean_change))]
    body = (f"<p>{len(ckpts)} checkpoints ({escape(', '.join(change.labels))}). Relative weight change "
            "‖W<sub>t+1</sub> − W<sub>t</sub>‖ / ‖W<sub>t</sub>‖ per layer:</p>"
            + table_html(rows, ["interval", "mean relative change", "largest"],
                         ["interval", "mean ‖ΔW‖/‖W‖ over layers", "layer that changed most"],
                         numeric=("mean relative change",)))
    data: dict[str, Any] = {"checkpoints": change.labels, "layers": change.layers, "intervals": change.intervals,
                            "weight_change": change.values, "mean_weight_change": mean_change}
    if inputs is not None and len(inputs):
        drift = compute_checkpoint_drift(ckpts, model, inputs, steps=steps)
        mean = drift.mean_correlation
        drift_rows = [{"checkpoint": label, "rho": float(r)} for label, r in zip(drift.labels, mean)]
        body += ("<h3>Explanations across checkpoints</h3>"
                 f"<p>Integrated gradients ({steps} steps) of the same {len(inputs)} inputs at every checkpoint, "
                 "compared with the final checkpoint by Spearman rank correlation ρ (1: the same ranking).</p>"
                 + table_html(drift_rows, ["checkpoint", "rho"], ["checkpoint", "mean ρ to final"], numeric=("rho",)))
        figures.append(viz_training.figure_drift_correlation(drift))
        figures.append(viz_training.figure_attribution_drift(drift, 0, model.spec, inputs))
        data.update({"drift_method": drift.method, "drift_steps": steps, "drift_targets": drift.target,
                     "drift_correlation": drift.correlation, "drift_mean_correlation": mean})
    return Section("Checkpoint evolution", body=body, figures=figures, data=round_data(data))
