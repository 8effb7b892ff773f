"""Overview: output, structure and training side by side, linked; the one-file report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from explain.digest import digest_array
from explain.errors import GlassboxError
from explain.finding import sort_findings
from explain.inputs.images import upsample
from explain.inputs.text import detokenize, padding_mask, token_display
from explain.output.layer_attribution import LAYER_METHODS, LayerChoices, classify_layers, explain_layer
from explain.output.methods import compatible_methods, get_method
from explain.training.evolution import checkpoint_label, checkpoint_sort_key, epoch_from_name, model_at, read_checkpoint
from explain.viz import attribution as viz
from explain.workspace import Action
from ui import jobs, state
from ui import workspace as team
from ui.attribution_view import render_attribution
from ui.inputs_view import render_prediction_warning, render_preprocessing
from ui.quality_view import render_quality_findings
from ui.report_download import render_report_job
from ui.run_view import snapshot_record
from ui.text import escape_markdown
from ui.widgets import caption_skipped_layers

DEFAULT_METHOD = "integrated_gradients"
FINAL = "final model"
STEPS = 32  # a responsive default for the linked views; the report uses the methods' own defaults
NO_LAYER = "(choose a layer)"
LAYER_STEPS = (16, 32, 64, 128, 256)


# -- cached computations (keyed by content digests) ---------------------------------------
@st.cache_resource(max_entries=32, show_spinner=False)
def _checkpoint_model(model_sha: str, path: str, _model):
    return model_at(read_checkpoint(path), _model)


@st.cache_resource(max_entries=64, show_spinner=False)
def _explain(model_key: str, x_sha: str, method: str, _model, _x):
    params = {"steps": STEPS} if "steps" in get_method(method).params else {}
    return get_method(method).explain(_model, _x, **params)


@st.cache_resource(max_entries=64, show_spinner=False)
def _explain_layer(model_key: str, x_sha: str, layer: str, method: str, steps: int, _model, _x):
    return explain_layer(_model, _x, layer, method=method, steps=steps)


@st.cache_data(max_entries=8, show_spinner=False)
def _layers(model_sha: str, x_sha: str, _model, _x) -> tuple[pd.DataFrame, LayerChoices]:
    """The Structure page's layer table at the depth it opens at (`layer_frame`), and the layers offered."""
    from explain.structure.layers import build_layer_table, layer_frame

    frame = layer_frame(build_layer_table(_model, _x))
    try:
        choices = classify_layers(_model, _x)
    except GlassboxError:  # not an eager model: the table still shows
        choices = LayerChoices([], {})
    return frame, choices


@st.cache_data(max_entries=8, show_spinner=False)
def _training(logs: tuple[str, ...], checkpoints: tuple[str, ...]):
    """The runs (several logs of one series are runs to compare, as on the Training page and in the
    report: `read_training_runs`), each run's findings, and where they came from."""
    from explain.report.analysis import read_training_runs
    from explain.training.findings import diagnose

    histories, origin = read_training_runs(list(logs), list(checkpoints))
    return histories, [sort_findings(diagnose(h)) for h in histories], origin


def _sources(sample: str | None, model_sha: str) -> tuple[list[str], list[str]]:
    """Training logs and checkpoints (paths), oldest first: those uploaded on the Training page for
    this model, else the sample's own."""
    uploaded_logs, uploaded_ckpts = state.training_uploads(model_sha)
    if uploaded_logs or uploaded_ckpts or sample is None:
        return uploaded_logs, sorted(uploaded_ckpts, key=lambda p: checkpoint_sort_key(Path(p).name))
    from sample_models import sample_dir

    root = Path(sample_dir(sample))
    logs = [str(root / "train_log.csv")] if (root / "train_log.csv").is_file() else []
    return logs, sorted((str(p) for p in (root / "checkpoints").glob("*.pt")),
                        key=lambda p: checkpoint_sort_key(Path(p).name))


# -- drawing -----------------------------------------------------------------------------
def _draw_attribution(model, attr, row: int, key: str) -> None:
    target = model.spec.class_name(int(attr.target[row]))
    render_attribution(model, attr, row, f"{attr.method} → {target}", key=key)  # as the Output page and the report


def _draw_layer(model, result, x: np.ndarray, key: str) -> None:
    target = model.spec.class_name(int(result.target[0]))
    title = f"{result.layer} · {result.method.replace('_', ' ')} → {target}"
    if result.kind == "spatial":
        image = viz.to_display_images(x, model.spec)[0]
        heat = upsample(result.display[0], image.shape[0], image.shape[1])
        st.plotly_chart(viz.image_attribution_figure(image, heat, float(viz.colour_limits(heat[None])[0]), title=title),
                        config={"displayModeBar": False}, key=key)
    elif result.kind == "tokens":
        st.caption(escape_markdown(title))
        st.html(viz.text_attribution_html(detokenize(x[0], model.spec), result.display[0],
                                          padding=padding_mask(x[0], model.spec),
                                          joins=[t.joins for t in token_display(x[0], model.spec)]))
    else:
        units = [f"unit {j}" for j in range(result.display.shape[1])]
        st.plotly_chart(viz.tabular_bar_figure(result.display[0], units, title=title),
                        config={"displayModeBar": False}, key=key)
    err_text, exceeded = result.completeness_text(0)
    st.caption(f"Σ over the layer {result.values[0].sum():.4g} vs f(x) − f(baseline) "
               f"{result.output[0] - result.base_value[0]:.4g} · {result.steps} steps · "
               + (f":orange[**{err_text}**]" if exceeded else
                  f"{err_text} (exact only for a layer every path goes through)"))


# -- the page ------------------------------------------------------------------------------
st.title("Overview")
team.stop_unless_may_explain()  # the map, the layer map and the attention run the model here
loaded = False
with state.error_boundary("Loading the model and inputs"):
    model = state.current_model()
    batch = state.current_inputs()
    sample = state.current_sample_name()
    probs = model.predict_proba(batch.array)
    loaded = True
if not loaded:
    st.stop()

n = len(batch)
names = [m.name for m in compatible_methods(model)]
top = st.columns([2, 2, 3])
index = top[0].selectbox("Input", list(range(n)), key="gb_ov_input",
                         format_func=lambda i: f"#{i} · {model.spec.class_name(int(np.argmax(probs[i])))}")
method = top[1].selectbox("Method", names, index=names.index(DEFAULT_METHOD) if DEFAULT_METHOD in names else 0,
                          key="gb_ov_method")
top[2].caption(f"{escape_markdown(model.name)} · {model.format} · {model.modality} · {n} inputs. Choose a layer (Structure) or a "
               "checkpoint (Training): the Output column follows.")
render_prediction_warning(model, probs)
render_preprocessing(model, batch, [index])
x = batch.array[index : index + 1]
x_sha = digest_array(x)
logs, checkpoints = _sources(sample, model.sha256)
frame, findings, attr = None, [], None  # each column below fills its part; Save run keeps what was shown
out_col, struct_col, train_col = st.columns([1, 1.25, 1.1], gap="medium")  # the layer table needs the room

with train_col:
    st.subheader("Training")
    chosen_ckpt = FINAL
    with state.error_boundary("Reading the training curves"):
        if not logs and not checkpoints:
            st.info("No training log for this model: upload logs or checkpoints on the Training page (the CLI report takes --logs / --checkpoints).")
        else:
            from explain.viz.training import figure_curves, figure_runs, run_names

            histories, run_findings, origin = _training(tuple(logs), tuple(checkpoints))
            run_labels = run_names(histories)
            fig = (figure_curves(histories[0], run_findings[0], height=420) if len(histories) == 1
                   else figure_runs(histories, height=420, names=run_labels))
            findings = [f for fs in run_findings for f in fs]
            fig.update_layout(legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.18, x=0),
                              margin=dict(l=0, r=0, t=10, b=0))
            labels = {p: checkpoint_label(p) for p in checkpoints}
            chosen_ckpt = st.selectbox("Explain with", [FINAL, *checkpoints], key="gb_ov_ckpt",
                                       format_func=lambda p: labels.get(p, p),
                                       help="Re-explain the input with this checkpoint's weights.")
            epoch = epoch_from_name(chosen_ckpt) if chosen_ckpt != FINAL else None
            if epoch is not None:
                fig.add_vline(x=epoch, line_dash="dot", line_color="#444")
            st.plotly_chart(fig, config={"displayModeBar": False}, key="ov_curves")
            for name, fs in zip(run_labels, run_findings):
                if len(histories) > 1:
                    st.markdown(f"**Findings · {escape_markdown(name)}**" + ("" if fs else ": none"))
                for f in fs:
                    st.markdown(f"{f.icon} **{f.kind}** — {escape_markdown(f.message)}")

with struct_col:
    st.subheader("Structure")
    chosen_layer, layer_method, layer_steps = NO_LAYER, LAYER_METHODS[0], STEPS
    with state.error_boundary("Describing the layers"):
        from explain.structure.layers import FLOPS_COLUMN, SHAPE_COLUMN

        frame, classified = _layers(model.sha256, x_sha, model, x)
        layer_choices = classified.attributable
        st.dataframe(frame, hide_index=True, height=300, key="ov_layers", column_config={
            "layer": st.column_config.TextColumn(width="medium"), "type": st.column_config.TextColumn(width="small"),
            SHAPE_COLUMN: st.column_config.TextColumn(width="small"),
            "parameters": st.column_config.NumberColumn(width="small", format="localized"),
            FLOPS_COLUMN: st.column_config.NumberColumn(width="small", format="compact"),
            "FLOP %": st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100)})
        st.caption("The Structure page's table at the depth it opens at: output shapes and FLOPs per input.")
        if layer_choices:
            chosen_layer = st.selectbox("Layer", [NO_LAYER, *layer_choices], key="gb_ov_layer",
                                        help="Show how much this layer's units mattered for the chosen input.")
            allowed = [m for m in LAYER_METHODS if not (m == "conductance" and model.modality == "text")]
            layer_method = st.radio("Layer method", allowed, horizontal=True, key="gb_ov_layer_method",
                                    format_func=lambda m: m.replace("_", " "))
            layer_steps = st.select_slider("Layer steps", LAYER_STEPS, value=STEPS, key="gb_ov_layer_steps",
                                           help="Integration steps of the layer attribution: raise them when "
                                                "its completeness error is flagged.")
            caption_skipped_layers(classified.skipped, "Not offered")
        else:
            st.caption("Layer attribution needs the model's layers (a weights file of a known architecture).")
    if model.modality == "text":
        with state.error_boundary("Reading the attention"):
            from explain.errors import IncompatibleInput
            from explain.report.analysis import attention_figures, attention_tokens
            from explain.structure.attention import attention_unavailable_reason, capture_attention

            why_not = attention_unavailable_reason(model)  # none to capture: said so, as on the Structure page
            try:
                maps = None if why_not else capture_attention(model, x)
            except IncompatibleInput as exc:
                why_not, maps = exc.message, None
            if maps is None:
                st.info(escape_markdown(why_not))
            else:
                tokens, keep = attention_tokens(model, x[0], maps.weights.shape[-1])
                last = maps.weights[-1:, 0]  # [1, head, q, k]
                fig = attention_figures(last, maps.layer_names[-1:], [tokens[i] for i in keep], keep, grid=False)[0]
                fig.update_layout(height=380)
                st.plotly_chart(fig, config={"displayModeBar": False}, key="ov_attention")

with out_col:
    st.subheader("Output")
    model_key = f"{model.sha256}:{chosen_ckpt}"
    explained = None  # the model at the chosen checkpoint, once it loaded
    with state.error_boundary("Explaining the input"):
        at_checkpoint = model if chosen_ckpt == FINAL else _checkpoint_model(model.sha256, chosen_ckpt, model)
        p = at_checkpoint.predict_proba(x)[0]
        explained = at_checkpoint
        k = int(np.argmax(p))
        truth = batch.labels[index] if batch.labels is not None else None
        st.markdown(f"**{escape_markdown(model.spec.class_name(k))}** ({p[k]:.1%})"
                    + (f" · true: {escape_markdown(model.spec.class_name(int(truth)))}" if truth is not None else "")
                    + (f" · weights: {escape_markdown(Path(chosen_ckpt).stem)}" if chosen_ckpt != FINAL else ""))
        with st.spinner(f"Explaining with {method}…"):
            attr = _explain(model_key, x_sha, method, explained, x)
        _draw_attribution(model, attr, 0, key="ov_map")
        render_quality_findings(model)  # e.g. "saliency fails the randomisation check", from the Quality tab
    if chosen_layer != NO_LAYER and explained is not None:
        with state.error_boundary(f"Attributing to layer {chosen_layer}"):
            with st.spinner(f"Attributing to {escape_markdown(chosen_layer)}…"):
                result = _explain_layer(model_key, x_sha, chosen_layer, layer_method, int(layer_steps), explained, x)
            _draw_layer(model, result, x, key="ov_layer_map")

team.render_save_run("overview", model, lambda name, version: snapshot_record(
    "overview", name, version, f"Overview of input #{index} of {model.name}", x,
    {"Prediction": pd.DataFrame({"class": [model.spec.class_name(i) for i in range(probs.shape[1])],
                                 "probability": probs[index]}),
     **({"Layers": frame} if frame is not None else {})},
    findings=findings, results={f"{method}/{k}": v for k, v in (attr.to_npz_dict() if attr else {}).items()}),
    key="overview")

st.divider()
st.subheader("Report")
st.caption("One self-contained HTML file (opens offline; also as PDF): model card, explanations of the first inputs, structure, "
           "training curves and findings, checkpoint evolution, environment and every parameter used. "
           "The same report as `python -m explain report`.")
report_methods = st.multiselect("Methods in the report", names, default=[method], key="gb_ov_report_methods")
report_key = f"{model.sha256}:{digest_array(batch.array)}:{','.join(report_methods)}"
REPORT_JOB_KEY = "gb_ov_report_job"  # (report key, job id): the report being built or built
if not team.can(Action.SAVE_RUN):
    st.caption("Reports are built as jobs of the team's queue and saved as runs, which needs the editor role; "
               "open a saved report on the Saved runs page.")
elif st.button("Build report (HTML)", key="gb_ov_build", disabled=not report_methods):
    with state.error_boundary("Queueing the report"):
        version = jobs.registered_version(model)
        job = jobs.submit_report(version.name, version.version, model, batch.array, labels=batch.labels,
                                 logs=logs, checkpoints=checkpoints, methods=report_methods)
        st.session_state[REPORT_JOB_KEY] = (report_key, job.id)
stored = st.session_state.get(REPORT_JOB_KEY)
if stored and stored[0] == report_key:
    with state.error_boundary("Building the report"):
        if not render_report_job(stored[1], report_key, model.name):
            del st.session_state[REPORT_JOB_KEY]
