"""Overview: output, structure and training side by side, linked; the one-file report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from explain.digest import digest_array
from explain.output.layer_attribution import LAYER_METHODS
from explain.output.methods import compatible_methods
from explain.report import overview
from explain.training.checkpoints import checkpoint_label, epoch_from_name
from explain.workspace import Action
from ui import jobs, state
from ui import workspace as team
from ui.attribution_view import render_attribution, render_layer_attribution
from ui.inputs_view import render_prediction_warning, render_preprocessing
from ui.overview_view import (
    FINAL,
    input_label,
    map_title,
    model_caption,
    overview_columns,
    prediction_line,
    render_view_choice,
    render_weights_choice,
)
from ui.quality_view import render_quality_findings
from ui.report_download import render_report_job
from ui.run_view import snapshot_record
from ui.text import escape_markdown
from ui.widgets import caption_skipped_layers

NO_LAYER = "(choose a layer)"
LAYER_STEPS = (16, 32, 64, 128, 256)


# -- the page ------------------------------------------------------------------------------
st.title("Overview")
team.stop_unless_may_explain()  # the map, the layer map and the attention run the model here
loaded = False
with state.error_boundary("Loading the model and inputs"):
    model = state.current_model()
    state.stop_if_causal_lm(model)  # explained by `python -m explain generate`
    batch = state.current_inputs()
    probs = overview.probabilities(model, batch.array)
    loaded = True
if not loaded:
    st.stop()

n = len(batch)
names = [m.name for m in compatible_methods(model)]
index, method = render_view_choice(range(n), input_label(model.spec, probs), names,
                                   model_caption(model.name, model.format, model.modality, n))
render_prediction_warning(model, probs)
render_preprocessing(model, batch, [index])
x = batch.array[index : index + 1]
team.recall_first_view(model, x, index, method)  # a sample's first view: read back from its saved run
logs, checkpoints = state.training_sources(model.sha256)
frame, findings, attr = None, [], None  # each column below fills its part; Save run keeps what was shown
out_col, struct_col, train_col = overview_columns()

with train_col:
    st.subheader("Training")
    chosen_ckpt = FINAL
    with state.error_boundary("Reading the training curves"):
        if not logs and not checkpoints:
            st.info("No training log for this model: upload logs or checkpoints on the Training page (the CLI report takes --logs / --checkpoints).")
        else:
            runs = overview.training_overview(logs, checkpoints)
            findings = runs.all_findings
            labels = {p: checkpoint_label(p) for p in checkpoints}
            chosen_ckpt = render_weights_choice(checkpoints, lambda p: labels.get(p, p))
            epoch = epoch_from_name(chosen_ckpt) if chosen_ckpt != FINAL else None
            st.plotly_chart(overview.training_figure(runs, epoch), config={"displayModeBar": False}, key="ov_curves")
            for name, fs in zip(runs.names, runs.findings):
                if len(runs.histories) > 1:
                    st.markdown(f"**Findings · {escape_markdown(name)}**" + ("" if fs else ": none"))
                for f in fs:
                    st.markdown(f"{f.icon} **{f.kind}** — {escape_markdown(f.message)}")

with struct_col:
    st.subheader("Structure")
    chosen_layer, layer_method, layer_steps = NO_LAYER, LAYER_METHODS[0], overview.OVERVIEW_STEPS
    with state.error_boundary("Describing the layers"):
        from explain.structure.layers import FLOPS_COLUMN, SHAPE_COLUMN

        layers = overview.layer_overview(model, x)
        frame, classified = layers.frame, layers.choices
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
            layer_steps = st.select_slider("Layer steps", LAYER_STEPS, value=overview.OVERVIEW_STEPS, key="gb_ov_layer_steps",
                                           help="Integration steps of the layer attribution: raise them when "
                                                "its completeness error is flagged.")
            caption_skipped_layers(classified.skipped, "Not offered")
        else:
            st.caption("Layer attribution needs the model's layers (a weights file of a known architecture).")
    if model.modality == "text":
        with state.error_boundary("Reading the attention"):
            attention = overview.last_attention(model, x)  # none to capture: said so, as on the Structure page
            if attention.figure is None:
                st.info(escape_markdown(attention.reason))
            else:
                st.plotly_chart(attention.figure, config={"displayModeBar": False}, key="ov_attention")

with out_col:
    st.subheader("Output")
    explained = None  # the model at the chosen checkpoint, once it loaded
    with state.error_boundary("Explaining the input"):
        at_checkpoint = model if chosen_ckpt == FINAL else overview.checkpoint_model(model, chosen_ckpt)
        p = probs[index] if chosen_ckpt == FINAL else overview.probabilities(at_checkpoint, x)[0]
        explained = at_checkpoint
        truth = batch.labels[index] if batch.labels is not None else None
        st.markdown(prediction_line(model.spec, p, truth, Path(chosen_ckpt).stem if chosen_ckpt != FINAL else None))
        with st.spinner(f"Explaining with {method}…"):
            attr = overview.explain_input(explained, x, method)
        render_attribution(model, attr, 0, map_title(model.spec, attr), key="ov_map")  # as the Output page and the report
        render_quality_findings(model)  # e.g. "saliency fails the randomisation check", from the Quality tab
    if chosen_layer != NO_LAYER and explained is not None:
        with state.error_boundary(f"Attributing to layer {chosen_layer}"):
            with st.spinner(f"Attributing to {escape_markdown(chosen_layer)}…"):
                result = overview.explain_input_layer(explained, x, chosen_layer, layer_method, int(layer_steps))
            render_layer_attribution(model, result, x, key="ov_layer_map")

team.keep_first_view(model, x, index, method)  # saved once, for the servers that start later
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
