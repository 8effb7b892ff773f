"""Output: why this prediction — attribution methods side by side."""
from __future__ import annotations

import numpy as np
import streamlit as st

from explain.errors import Cancelled
from explain.output.methods import compatible_methods, get_method
from ui import jobs, state
from ui import workspace as team
from ui.attribution_view import map_controls, render_downloads, render_grid, render_summary
from ui.quality_view import render_quality_tab
from ui.run_view import output_record
from ui.text import escape_markdown
from ui.widgets import ProgressBar, param_widgets

DEFAULT_METHOD = "integrated_gradients"
MAX_ROWS = {"image": 4, "tabular": 3, "text": 4}


st.title("Output explanations")

ready = False  # the boundary below may stop half-way: nothing it defines is used unless it finished
with state.error_boundary("Loading the model and inputs"):
    model = state.current_model()
    batch = state.current_inputs()
    methods = compatible_methods(model)
    names = [m.name for m in methods]
    n_inputs = len(batch.array)
    probs = model.predict_proba(batch.array)

    st.caption(f"{escape_markdown(model.name)} · {model.format} · {model.modality} · {n_inputs} inputs · "
               f"{len(names)} compatible methods")

    c1, c2, c3 = st.columns([2, 2, 1])
    chosen = c1.multiselect("Methods", names, default=[DEFAULT_METHOD] if DEFAULT_METHOD in names else names[:1],
                            key="gb_methods", help="Only methods compatible with this model are listed.")
    default_rows = list(range(min(MAX_ROWS.get(model.modality, 4), n_inputs)))
    rows = c2.multiselect("Inputs to show", list(range(n_inputs)), default=default_rows, key=f"gb_rows_{model.sha256[:12]}",
                          format_func=lambda i: f"#{i} · {model.spec.class_name(int(np.argmax(probs[i])))}")
    target_options = ["predicted class"] + [model.spec.class_name(k) for k in range(probs.shape[1])]
    target_choice = c3.selectbox("Target", target_options, key="gb_target")
    map_options = map_controls(model.modality)

    params_by_method = {}
    if chosen:
        with st.expander("Method parameters"):
            param_cols = st.columns(len(chosen))
            for col, name in zip(param_cols, chosen):
                with col:
                    st.markdown(f"**{name}**")
                    params_by_method[name] = param_widgets(name, get_method(name).params)
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

if st.session_state.get("gb_cancelled"):
    st.info("The last run was cancelled.")
    if not st.button("Explain", type="primary"):
        st.stop()
    st.session_state["gb_cancelled"] = False

results = []
cancel_slot = st.empty()
for name in chosen:
    params = params_by_method.get(name, {})
    with state.error_boundary(f"Explaining with {name}"):
        bar = ProgressBar(f"Explaining with {name}")
        if cancel_slot.button("Cancel", key=f"gb_cancel_{name}"):
            st.session_state["gb_cancelled"] = True
            st.rerun()
        try:
            # Explainer.explain keeps results in the process-wide LRU cache (explain.output.cache),
            # keyed by (model sha256, inputs hash, method, parameters, target): reruns cost nothing.
            attr = get_method(name).explain(model, inputs, target=target, progress=bar, **params)
        except Cancelled:
            st.session_state["gb_cancelled"] = True
            raise
        finally:
            bar.clear()
        results.append(attr)
cancel_slot.empty()

if results:
    shown = [explain_rows.index(r) for r in (rows or default_rows) if r in explain_rows]
    labels = batch.labels[explain_rows] if batch.labels is not None else None
    maps_tab, quality_tab = st.tabs(["Maps", "Quality"])
    with quality_tab:  # first, so the maps carry its quality line
        quality = render_quality_tab(model, results, state.current_masks(), explain_rows)
    with maps_tab, state.error_boundary("Drawing the results"):
        render_grid(model, results, shown, probs[explain_rows], labels, map_options, quality=quality)
        render_summary(model, results)
        with st.expander("Download"):
            render_downloads(model, results)
        team.render_save_run("output", model, lambda name, version: output_record(
            name, version, model, inputs, explain_rows, shown, probs[explain_rows], labels, results, target, map_options.sign,
            params_by_method), key="output")
        jobs.render_queue_button(model, inputs, chosen, params_by_method, target)
