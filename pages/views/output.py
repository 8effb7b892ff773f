"""Output: why this prediction — attribution methods side by side."""
from __future__ import annotations

import numpy as np
import streamlit as st

from explain.output.methods import compatible_methods, get_method
from explain.service.client import JobNotDone
from explain.workspace.records import output_attributions, output_quality
from ui import jobs, state
from ui import workspace as team
from ui.attribution_view import map_controls, render_downloads, render_grid, render_summary
from ui.choice import choice_box
from ui.inputs_view import render_input_notes, render_prediction_warning, render_preprocessing
from ui.quality_view import quality_controls, render_quality_results
from ui.text import escape_markdown
from ui.widgets import method_param_choices, param_widgets

DEFAULT_METHOD = "integrated_gradients"
MAX_ROWS = {"image": 4, "tabular": 3, "text": 4}


st.title("Output explanations")
team.stop_unless_may_explain()  # a viewer never loads or runs the model here (explaining is a job, saved as a run)

ready = False  # the boundary below may stop half-way: nothing it defines is used unless it finished
with state.error_boundary("Loading the model and inputs"):
    model = state.current_model()
    state.stop_if_causal_lm(model)  # explained by `python -m explain generate`
    batch = state.current_inputs()
    methods = compatible_methods(model)
    names = [m.name for m in methods]
    n_inputs = len(batch.array)
    probs = model.predict_proba(batch.array)

    st.caption(f"{escape_markdown(model.name)} · {model.format} · {model.modality} · {n_inputs} inputs · "
               f"{len(names)} compatible methods")
    render_prediction_warning(model, probs)
    render_input_notes(batch)

    c1, c2, c3 = st.columns([2, 2, 1])
    chosen = c1.multiselect("Methods", names, default=[DEFAULT_METHOD] if DEFAULT_METHOD in names else names[:1],
                            key="gb_methods", help="Only methods compatible with this model are listed.")
    default_rows = list(range(min(MAX_ROWS.get(model.modality, 4), n_inputs)))
    rows = c2.multiselect("Inputs to show", list(range(n_inputs)), default=default_rows, key=f"gb_rows_{model.sha256[:12]}",
                          format_func=lambda i: f"#{i} · {model.spec.class_name(int(np.argmax(probs[i])))}")
    target_options = ["predicted class"] + [model.spec.class_name(k) for k in range(probs.shape[1])]
    target_choice = choice_box(c3, "Target", target_options, key="gb_target")
    map_options = map_controls(model.modality)
    render_preprocessing(model, batch, rows or default_rows)

    params_by_method = {}
    if chosen:
        with st.expander("Method parameters"):
            param_cols = st.columns(len(chosen))
            for col, name in zip(param_cols, chosen):
                with col:
                    st.markdown(f"**{name}**")
                    params_by_method[name] = param_widgets(name, get_method(name).params,
                                                           choices=method_param_choices(model, name))
    ready = True
if not ready:
    st.stop()

if not chosen:
    st.info("Choose at least one method.")
    st.stop()

target = None if target_choice == "predicted class" else target_options.index(target_choice) - 1
# Explain the whole batch for tabular (the summary needs every row), only the shown rows otherwise.
explain_rows = list(range(n_inputs)) if model.modality == "tabular" else sorted(rows or default_rows)
inputs = batch.array[explain_rows]

shown = [explain_rows.index(r) for r in (rows or default_rows) if r in explain_rows]
labels = batch.labels[explain_rows] if batch.labels is not None else None
asked = [(name, params_by_method.get(name, {})) for name in chosen]
maps_tab, quality_tab = st.tabs(["Maps", "Quality"])
with quality_tab, state.error_boundary("Choosing the metrics"):
    measured = quality_controls(model, state.current_masks(), explain_rows)  # measured in the same job
job_key = jobs.request_key(model, inputs, asked, target, measured.metrics, measured.masks)
followed = st.session_state.setdefault("gb_output_jobs", {})  # request key -> job id

if st.session_state.get("gb_cancelled"):
    st.info("The last run was cancelled.")
    if not st.button("Explain", type="primary"):
        st.stop()
    st.session_state["gb_cancelled"] = False

run = None
with state.error_boundary("Explaining"):
    if job_key not in followed:
        job = jobs.submit_explain(model, inputs, asked, target, rows=explain_rows, shown=shown, labels=labels,
                                  sign=map_options.sign, metrics=measured.metrics, masks=measured.masks)
        followed[job_key] = job.id
    try:
        job, run = jobs.follow_job(followed[job_key], f"Explaining with {', '.join(chosen)}")
    except JobNotDone:
        if st.button("Try again", key="gb_output_retry", help="Queue this explanation again."):
            del followed[job_key]
            st.rerun()
        raise
    if job.status == "cancelled":  # here or on the Queue page: the next run says so and offers Explain
        st.session_state["gb_cancelled"] = True
        followed.clear()
        st.rerun()
if run is None:
    st.stop()
results = output_attributions(run)
quality = output_quality(run)

with quality_tab, state.error_boundary("Drawing the quality"):
    render_quality_results(model, quality, measured)
with maps_tab, state.error_boundary("Drawing the results"):
    render_grid(model, results, shown, probs[explain_rows], labels, map_options, quality=quality)
    render_summary(model, results)
    with st.expander("Download"):
        render_downloads(model, results)
    team.render_share_link(f"Saved as run `{run.info.id}` (job {followed[job_key]}). Link to it:", run=run.info.id)
