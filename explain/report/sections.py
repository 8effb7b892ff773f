"""Section builders for `explain.report.document`: model card, outputs, structure, training, ...

`build_report` calls each builder inside `_guarded`: a builder that raises
becomes a section that says what failed and why (one line) and the rest of
the report is still built. Every number a section shows is put in its
``data`` (see `explain.report.document.Section`).
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explain.attribution import WARNING_MARK, run_details
from explain.compare.comparison import Comparison
from explain.digest import digest_array, digest_bytes
from explain.errors import Cancelled, UsageError, one_line
from explain.generation.job import SavedGeneration
from explain.inputs.images import describe_preprocessing
from explain.inputs.tabular import feature_names as tabular_feature_names
from explain.inputs.text import detokenize, padding_mask
from explain.loading.source import read_source
from explain.model import LoadedModel
from explain.params import PER_INPUT, resolve_params, select_per_input
from explain.progress import ProgressFn, report_progress
from explain.report import analysis
from explain.report.compare import build_compare_section
from explain.report.document import (
    Report,
    Section,
    escape,
    format_number,
    image_tag,
    key_value_html,
    round_data,
    table_html,
)
from explain.report.generation import build_generation_section
from explain.report.quality import build_quality_section
from explain.report.review import ReviewRecord, build_review_section
from explain.training.history import EventFolder

#: inputs each output section shows by default.
DEFAULT_MAX_INPUTS = 4
#: layers listed in the structure table (the rest are summarised in one row).
MAX_LAYER_ROWS = 80
VERSION_PACKAGES = ("torch", "captum", "shap", "streamlit", "plotly", "numpy", "pandas", "pillow", "safetensors")


# -- inputs and sources ------------------------------------------------------------
def inputs_array(inputs: Any) -> np.ndarray | None:
    """A model-ready array from an ``InputBatch`` (``.array``) or an array; None stays None."""
    if inputs is None:
        return None
    return np.asarray(getattr(inputs, "array", inputs))


def describe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as plain values: an array becomes its shape and sha256."""
    return {k: ({"array_shape": list(v.shape), "sha256": digest_array(v)} if isinstance(v, np.ndarray) else v)
            for k, v in params.items()}


def example_inputs(model: LoadedModel, inputs: np.ndarray | None) -> np.ndarray:
    """One model-ready example: the first input, or a neutral one built from the spec."""
    if inputs is not None and len(inputs):
        return inputs[:1]
    shape = (1, *model.spec.input_shape)
    if model.modality == "text":
        return np.ones(shape, dtype=np.int64)  # <unk> tokens: never an all-padding row
    return np.zeros(shape, dtype=np.float32)


# -- model card --------------------------------------------------------------------
def build_model_card(model: LoadedModel, structure: dict[str, Any] | None, structure_error: str | None) -> Section:
    spec = model.spec
    flops = structure["total_flops"] if structure else None
    card = {
        "name": model.name,
        "format": model.format,
        "sha256": model.sha256,
        "architecture": model.architecture or "—",
        "modality": spec.modality,
        "input shape (per sample)": "×".join(str(d) for d in spec.input_shape),
        "input dtype": spec.dtype,
        "parameters": model.parameter_count(),
        "FLOPs per sample (forward)": flops if flops is not None else f"not available ({structure_error})",
        "classes": ", ".join(spec.class_names) if spec.class_names else "—",
        "device": str(model.device),
    }
    if spec.modality == "image":  # the one preprocessing, named as the pages name it (`describe_preprocessing`)
        card["image preprocessing"] = describe_preprocessing(spec)
    if spec.mean is not None:
        card["normalisation mean"] = ", ".join(format_number(float(v)) for v in spec.mean[:8])
        card["normalisation std"] = ", ".join(format_number(float(v)) for v in spec.std[:8]) if spec.std else "—"
    if spec.feature_names:
        card["features"] = f"{len(spec.feature_names)}: " + ", ".join(spec.feature_names[:10]) + (
            " …" if len(spec.feature_names) > 10 else "")
    if spec.vocabulary:
        card["vocabulary"] = f"{len(spec.vocabulary)} tokens" + (f", {spec.cls_token} first" if spec.cls_token else "")
    if model.fixed_batch_size:
        card["fixed batch size"] = model.fixed_batch_size
    if "epoch" in model.extra:
        card["checkpoint epoch"] = model.extra["epoch"]
    data = {"name": model.name, "format": model.format, "sha256": model.sha256, "architecture": model.architecture,
            "modality": spec.modality, "input_shape": list(spec.input_shape), "dtype": spec.dtype,
            "parameters": model.parameter_count(), "flops": flops, "class_names": list(spec.class_names),
            # the tokenizer by its digest: its text can be megabytes, and the model file carries it
            "spec": {**spec.to_dict(), "tokenizer": digest_bytes(spec.tokenizer.encode()) if spec.tokenizer else None}}
    return Section("Model card", body=key_value_html(card), data=round_data(data))


# -- output explanations -------------------------------------------------------------
def build_output_section(model: LoadedModel, inputs: np.ndarray, labels: np.ndarray | None, method: str,
                         params: dict[str, Any]) -> Section:
    """Explain ``inputs`` with one method: maps / bars / tokens per input plus a numbers table."""
    from explain.output.methods import get_method
    from explain.output.methods.base import completeness_caption

    explainer = get_method(method)
    title = f"Output: {explainer.title or method}"
    attr = explainer.explain(model, inputs, **params)
    probs = model.predict_proba(inputs)  # [N, K]
    names = model.spec.class_names or [str(k) for k in range(probs.shape[1])]
    rows = []
    for i in range(len(attr)):
        pred = int(np.argmax(probs[i]))
        flat = np.asarray(attr.values[i], dtype=np.float64).ravel()
        rows.append({
            "input": i, "prediction": _name(names, pred), "probability": float(probs[i, pred]),
            "label": _name(names, int(labels[i])) if labels is not None else None,
            "target": _name(names, int(attr.target[i])), "target_logit": float(attr.output[i]),
            "base_value": float(attr.base_value[i]), "attribution_sum": float(flat.sum()),
            "max_abs_attribution": float(np.abs(flat).max()) if flat.size else 0.0,
            "completeness_error": float(attr.completeness_error[i]),
            **dict(zip(("completeness", "completeness_exceeded"), completeness_caption(attr, i))),
        })
    tolerance = explainer.tolerance(attr.params)
    data: dict[str, Any] = {
        "method": attr.method, "params": describe_params(attr.params),
        "device": attr.device, "precision": attr.precision, "seconds": attr.seconds, "inputs": rows,
        "completeness_tolerance": tolerance, "details": run_details(attr.params),
    }
    cells, figures = _output_visuals(model, attr, rows, data)
    table = table_html(rows, ["input", "prediction", "probability", "label", "target", "attribution_sum",
                              "completeness_error"],
                       ["input", "prediction", "p", "true label", "target", "Σ attribution", "completeness error"],
                       numeric=("input", "probability", "attribution_sum", "completeness_error"))
    err = attr.max_completeness_error
    meta = (f"{len(attr)} inputs · {attr.seconds:.2f} s · device {attr.device} · precision {attr.precision} · "
            + "".join(f"{d} · " for d in data["details"])
            + f"largest completeness error {format_number(err) if err is not None else 'not defined for this method'}"
            f" · parameters: {', '.join(f'{k}={v}' for k, v in data['params'].items()) or 'defaults'}")
    flagged = [r for r in rows if r["completeness_exceeded"]]
    which = ", ".join(f"#{r['input']}" for r in flagged)
    warning = (f'<p class="sev-warning">{escape(WARNING_MARK)} {len(flagged)} of {len(rows)} maps exceed the '
               f'completeness tolerance {tolerance:g} (input {which}): {escape(explainer.completeness_remedy)}.</p>'
               if flagged else "")
    return Section(title, body=f'<p class="muted">{escape(meta)}</p>{warning}{cells}{table}', figures=figures,
                   data=round_data(data), notes=list(attr.notes))


def _name(names: Sequence[str], k: int) -> str:
    return names[k] if 0 <= k < len(names) else f"class {k}"


def _output_visuals(model: LoadedModel, attr, rows: list[dict], data: dict) -> tuple[str, list]:
    """HTML cells (image maps, token highlights) and plotly figures (tabular bars) for one result."""
    from explain.viz import attribution as viz

    def caption(r: dict) -> str:
        truth = f" · true {escape(r['label'])}" if r["label"] is not None else ""
        err_text = escape(r["completeness"])
        if r["completeness_exceeded"]:
            err_text = f'<strong class="sev-warning">{err_text}</strong>'
        details = "".join(f"<br>{escape(d)}" for d in data.get("details", []))
        return (f'<div class="pred">#{r["input"]} · {escape(r["prediction"])} ({r["probability"]:.1%}){truth}</div>'
                f'<div class="cap">→ {escape(r["target"])} · {err_text}{details}</div>')

    if model.modality == "image":
        images = viz.to_display_images(attr.inputs, model.spec)  # [N, H, W, 3]
        maps = viz.image_maps(attr)  # [N, H, W]
        zmax = float(viz.map_limits(attr)[0])  # the pages' rule: one limit shared by the inputs shown
        data["color_limit"] = zmax
        cells = [
            f'<div class="cell">{image_tag(images[i], f"input {i}", width=112)}'
            f'{image_tag(viz.overlay_pixels(images[i], maps[i], zmax), f"{attr.method} map for input {i}", width=112)}'
            f'{caption(r)}</div>'
            for i, r in enumerate(rows)
        ]
        legend = ('<p class="muted">Each pair: the input, then the attribution over a grey-scale copy of it '
                  '(opacity follows magnitude; one colour scale, symmetric about zero, for all inputs; '
                  'the target of each input is under it).</p>' + viz.legend_html(zmax, "all"))
        return legend + '<div class="cards">' + "".join(cells) + "</div>", []
    if model.modality == "text":
        cells = []
        for i, r in enumerate(rows):
            toks, pad = detokenize(attr.inputs[i], model.spec), padding_mask(attr.inputs[i], model.spec).reshape(-1)
            r["tokens"] = [{"token": t, "attribution": float(v)}
                           for t, v, p in zip(toks, attr.values[i], pad) if not p]
            html_tokens = viz.attribution_figure(attr, model.spec, i, target=r["target"])  # as the pages draw it
            cells.append(f'<div class="cell" style="flex:1 1 100%">{caption(r)}'
                         f'<div class="tokens">{html_tokens}</div></div>')
        return '<div class="cards">' + "".join(cells) + "</div>", []
    feature_names = tabular_feature_names(model.spec)
    raw = viz.feature_values(model.spec, attr.inputs)
    figures = []
    for i, r in enumerate(rows):
        top = np.argsort(-np.abs(attr.values[i]))[: viz.TOP_K]
        r["top_features"] = [{"feature": feature_names[j], "value": float(raw[i, j]),
                              "attribution": float(attr.values[i, j])} for j in top]
        title = f"#{i} · {r['prediction']} ({r['probability']:.1%}) → {r['target']}"
        figures.append(viz.attribution_figure(attr, model.spec, i, title=title))  # as the pages draw it (escaped there)
    return "", figures


# -- environment and parameters -----------------------------------------------------------
def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (without importing them)."""
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_environment(model: LoadedModel, precisions: Sequence[str]) -> Section:
    versions = package_versions()
    if torch.cuda.is_available():
        accel = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        accel = "none (CPU only)"
    env = {**versions, "platform": platform.platform(terse=True), "machine": platform.machine(),
           "accelerator": accel, "model device": str(model.device),
           "precision": ", ".join(sorted(set(precisions))) or "fp32", "torch threads": torch.get_num_threads()}
    data = {"versions": versions, "platform": env["platform"], "accelerator": accel, "device": str(model.device),
            "precisions": sorted(set(precisions)) or ["fp32"], "torch_threads": torch.get_num_threads()}
    return Section("Environment", body=key_value_html(env), data=round_data(data))


def build_parameters(report_params: dict[str, Any], created: str, seconds: float) -> Section:
    import json

    shown = {k: v for k, v in report_params.items() if k != "invocation"}
    rows = [{"parameter": k, "value": json.dumps(round_data(v))} for k, v in shown.items()]
    cmd = report_params.get("invocation", {}).get("command")
    per_input = any(PER_INPUT in p for p in (report_params.get("method_params") or {}).values())
    body = (f'<p>Made {escape(created)} in {seconds:.1f} s. These are every parameter used; the same call '
            "reproduces the numbers above."
            + (f" A method's <code>{PER_INPUT}</code> values are what each input used (one per input, as its run "
               "recorded them)." if per_input else "")
            + "</p>" + table_html(rows, ["parameter", "value"]))
    if cmd:
        body += f"<h3>Command line</h3><pre>{escape(cmd)}</pre>"
    data = {"params": round_data(shown), "created": created, "build_seconds": seconds}
    return Section("Reproducibility", body=body, data=data)


# -- the report ------------------------------------------------------------------------
def build_report(model: LoadedModel, inputs: Any = None, logs: Sequence[Any] = (), checkpoints: Sequence[Any] = (),
                 methods: Sequence[str] = ("integrated_gradients",), progress: ProgressFn | None = None, *,
                 max_inputs: int = DEFAULT_MAX_INPUTS, method_params: dict[str, dict[str, Any]] | None = None,
                 labels: np.ndarray | None = None, title: str | None = None,
                 invocation: dict[str, Any] | None = None, review: ReviewRecord | None = None,
                 quality: Sequence[str] | None = None, masks: np.ndarray | None = None,
                 comparison: Comparison | None = None, generation: SavedGeneration | None = None) -> Report:
    """Build every section of a report; a part that fails becomes a section saying why.

    Args:
        model: the model to report on.
        inputs: model-ready array [N, ...] or an ``InputBatch``; the first
            ``max_inputs`` are explained. None: no output sections.
        logs: training logs (paths, TensorBoard folders or ``(name, bytes)``).
        checkpoints: checkpoints (paths or ``(name, bytes)``), in training order.
        methods: attribution methods, one output section each.
        progress: called with (done, total) after each part.
        max_inputs: how many inputs the output sections explain.
        method_params: per-method parameters, e.g. ``{"integrated_gradients": {"steps": 32}}``; a
            saved run's recorded ones may carry ``per_input`` (one value per input of ``inputs``,
            `explain.attribution.Attribution`): each explained input then uses its own.
        labels: true classes [N] (default: the ``InputBatch``'s labels).
        title: the report title (default: "Glassbox report: <model name>").
        invocation: how the report was asked for (``{"command": ...}``); shown, never compared.
        review: the workspace's decisions and comments on this model version (a Review section).
        quality: quality metrics of the Quality section (default: the cheap ones the model and
            ``masks`` allow; empty: no Quality section).
        masks: ground-truth masks [N, ...] of ``inputs`` for the localisation metrics.
        comparison: a saved comparison of this version with another (a Compare section).
        generation: a saved generation run of this causal LM (a Generation section).

    Raises:
        UsageError: an unknown method name or a bad ``max_inputs``.
        Cancelled: raised by ``progress``.
    """
    from explain.output.methods import get_method

    start = time.perf_counter()
    if max_inputs < 1:
        raise UsageError(f"max_inputs must be at least 1, got {max_inputs}.")
    methods = list(dict.fromkeys(methods))
    # unknown methods or parameters are a usage error, found before any work
    given_params = {m: dict((method_params or {}).get(m, {})) for m in methods}
    method_params = {m: resolve_params(get_method(m).params, given_params[m]) for m in methods}
    array = inputs_array(inputs)
    for m in methods:  # a record's per-input values (a run's report): checked against the inputs, kept
        recorded = get_method(m).check_per_input(given_params[m].get(PER_INPUT), len(array)) if array is not None else None
        if recorded:
            method_params[m][PER_INPUT] = recorded
    labels = labels if labels is not None else getattr(inputs, "labels", None)
    shown = array[:max_inputs] if array is not None else None
    # what the explained inputs use: each its recorded values where the parameters carry them
    shown_params = {m: select_per_input(p, slice(0, max_inputs)) for m, p in method_params.items()}
    shown_labels = np.asarray(labels)[:max_inputs] if labels is not None else None
    log_ids = [_identify(s) for s in logs]
    ckpt_ids = [_identify(s) for s in checkpoints]

    report = Report(title or f"Glassbox report: {model.name}")
    report.subtitle = (f"{model.name} · {model.format} · sha256 {model.sha256[:12]}… · "
                       + (f"{len(shown)} of {len(array)} inputs explained" if array is not None else "no inputs"))
    report.params = {
        "model": {"name": model.name, "format": model.format, "sha256": model.sha256},
        "inputs": None if array is None else {"count": int(len(array)), "explained": int(len(shown)),
                                              "shape": list(array.shape), "sha256": digest_array(array)},
        "methods": methods, "method_params": {m: describe_params(p) for m, p in method_params.items()},
        "max_inputs": max_inputs,
        "logs": log_ids, "checkpoints": ckpt_ids, "invocation": invocation or {},
    }
    steps: list[tuple[str, Callable[[], list[Section]]]] = []
    structure: dict[str, Any] = {}

    def card() -> list[Section]:
        try:
            structure["value"] = analysis.describe_structure(model, example_inputs(model, shown))
        except Exception as exc:  # the card still shows everything else
            structure["error"] = one_line(exc)
        return [build_model_card(model, structure.get("value"), structure.get("error"))]

    steps.append(("Model card", card))
    attrs_precisions: list[str] = []
    for m in methods:
        def output(m=m) -> list[Section]:
            if shown is None:
                return [Section.failed(f"Output: {get_method(m).title or m}",
                                       "No inputs were given, so there is nothing to explain (pass --inputs).")]
            section = build_output_section(model, shown, shown_labels, m, shown_params[m])
            attrs_precisions.append(section.data.get("precision", "fp32"))
            return [section]
        steps.append((f"Output: {get_method(m).title or m}", output))

    if methods and shown is not None:
        from explain.output.metrics.quality import default_metrics

        shown_masks = None if masks is None else np.asarray(masks)[:max_inputs]
        metrics = list(quality) if quality is not None else default_metrics(model, shown_masks is not None)
        report.params["quality_metrics"] = metrics
        if metrics:
            steps.append(("Quality", lambda: [build_quality_section(model, shown, methods, shown_params, metrics,
                                                                   shown_masks)]))

    def struct() -> list[Section]:
        if "error" in structure:
            return [Section.failed("Structure", structure["error"])]
        return [analysis.build_structure_section(model, structure["value"])]

    steps.append(("Structure", struct))
    try:
        attention, attention_error = analysis.has_attention(model), None
    except Exception as exc:  # cannot even tell: a text model's report says so, others skip attention
        attention, attention_error = model.modality == "text", one_line(exc)

    def attention_section() -> list[Section]:
        if attention_error:
            return [Section.failed("Attention", attention_error)]
        example = example_inputs(model, shown)
        section = analysis.build_attention_section(model, shown, example)
        if model.modality == "image":
            add_image_rollout(section, model, shown[:1] if shown is not None else example)
        return [section]

    if attention:
        steps.append(("Attention", attention_section))
    if logs or checkpoints or model.extra.get("history"):
        steps.append(("Training", lambda: [analysis.build_training_section(model, logs, checkpoints)]))
    evolution_steps = int(method_params.get("integrated_gradients", {}).get("steps") or 32)
    report.params["evolution_steps"] = evolution_steps if len(checkpoints) >= 2 else None
    if len(checkpoints) >= 2:
        steps.append(("Checkpoint evolution",
                      lambda: [analysis.build_evolution_section(model, checkpoints, shown, evolution_steps)]))
    if comparison is not None:
        steps.append(("Compare", lambda: [build_compare_section(comparison, comparison.spec or model.spec)]))
    if generation is not None:
        steps.append(("Generation", lambda: [build_generation_section(generation, generation.spec or model.spec)]))
    if review is not None:
        steps.append(("Review", lambda: [build_review_section(review)]))
    steps.append(("Environment", lambda: [build_environment(model, attrs_precisions)]))

    total = len(steps) + 1
    for done, (name, build) in enumerate(steps):
        report.sections.extend(_guarded(name, build))
        report_progress(progress, done + 1, total)
    created = report.created.strftime("%Y-%m-%d %H:%M:%S UTC")
    report.sections.append(build_parameters(report.params, created, time.perf_counter() - start))
    report_progress(progress, total, total)
    return report


def add_image_rollout(section: Section, model: LoadedModel, x: np.ndarray) -> None:
    """An image model's attention section gets the rollout from ``[CLS]`` to the patches drawn over
    input #0 (`explain.structure.attention.image_rollout`), as the Structure page draws it, and the
    patch shares in its data. Nothing when the tokens are not patches of the image."""
    from explain.structure.attention import capture_attention, image_rollout, patch_grid
    from explain.viz.attribution import to_display_images
    from explain.viz.structure import figure_image_heatmap

    maps = capture_attention(model, x[:1])
    grid = patch_grid(maps.num_tokens, model.spec.input_shape)
    if grid is None or maps.weights.shape[-1] != maps.num_tokens:
        return
    h, w = model.spec.input_shape[-2:]
    patches, heat = image_rollout(maps.weights[:, 0], grid, h, w)
    source = "[CLS]" if grid.extra else "all positions (mean)"
    image = to_display_images(np.asarray(x[:1]), model.spec)[0]
    section.body += (f"<p>Attention rollout of {escape(source)} across the {maps.num_layers} layers, to the "
                     f"{grid.rows}×{grid.cols} patches of input #0, each patch's share spread over its square of "
                     f"the image (positions named (row, col); largest share {format_number(float(patches.max()))}).</p>")
    section.figures.append(figure_image_heatmap(image, heat, f"What {source} draws on after all layers",
                                                label="rollout share"))
    section.data.update(round_data({"patch_grid": [grid.rows, grid.cols], "extra_tokens": grid.extra,
                                    "patch_labels": grid.labels()[grid.extra:], "rollout": patches}))


def _identify(source: Any) -> dict[str, Any]:
    """Name and sha256 of a log/checkpoint, so the report says exactly what it read."""
    if isinstance(source, LoadedModel):
        return {"name": source.name, "sha256": source.sha256}
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = EventFolder.read(source)
    if isinstance(source, EventFolder):  # a TensorBoard folder: its event files, as read
        data = b"".join(content for _, content in source.files)
        return {"name": Path(source.path).name, "sha256": digest_bytes(data), "bytes": len(data)}
    data, name = read_source(source)
    return {"name": name, "sha256": digest_bytes(data), "bytes": len(data)}


def _guarded(title: str, build: Callable[[], list[Section]]) -> list[Section]:
    """Run a builder; any failure (but a cancel) becomes one failed section."""
    try:
        return build()
    except Cancelled:
        raise
    except Exception as exc:
        return [Section.failed(title, exc)]
