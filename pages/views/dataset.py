"""Dataset: explain a whole dataset shard by shard; global summaries appear as shards finish."""
from __future__ import annotations

import streamlit as st

from explain import config
from explain.dataset.job import partial_view, saved_dataset
from explain.output.methods import compatible_methods, get_method
from ui import jobs, state
from ui import workspace as team
from ui.choice import choice_box
from ui.dataset_view import (
    DATASET_TYPES,
    current_dataset,
    dataset_caption,
    keep_uploads,
    render_download,
    render_summary,
)
from ui.widgets import method_param_choices, param_widgets

DEFAULT_METHOD = "integrated_gradients"
JOBS_KEY = "gb_ds_jobs"  # run settings -> the job that explains the dataset with them

st.title("Dataset explanations")
st.caption("Explain every row of a dataset as a batch job of the team's queue: summaries over all of them, "
           "drawn as each shard finishes, and the whole run saved.")
team.stop_unless_may_explain()

ready = False
with state.error_boundary("Loading the model and the dataset"):
    model = state.current_model()
    state.stop_if_causal_lm(model)  # explained by `python -m explain generate`
    st.file_uploader("Dataset (.npz/.npy, .csv, .txt one text per line, images or a .zip of them)",
                     type=DATASET_TYPES, accept_multiple_files=True, key="gb_ds_files",
                     on_change=keep_uploads, args=("gb_ds_files",),
                     help="Without an upload, the inputs of the sidebar (or the sample's) are used.")
    dataset, data_key = current_dataset(model)
    st.caption(dataset_caption(model, dataset))
    names = [m.name for m in compatible_methods(model)]
    c1, c2, c3 = st.columns([2, 2, 1])
    method = c1.selectbox("Method", names, index=names.index(DEFAULT_METHOD) if DEFAULT_METHOD in names else 0,
                          key="gb_ds_method")
    targets = [("predicted class", None)] + ([("each row's label", "label")] if dataset.labels is not None else []) \
        + [(model.spec.class_name(k), k) for k in range(len(model.spec.class_names))]
    choice = choice_box(c2, "Target", range(len(targets)), format_func=lambda i: targets[i][0], key="gb_ds_target")
    target = targets[choice][1]
    shard_rows = int(c3.number_input("Rows per shard", min_value=1, max_value=4096, value=16, key="gb_ds_shard"))
    engine_name = "local"
    if config.ray_address():
        engine_name = st.radio("Run on", ["local", "ray"], horizontal=True, key="gb_ds_engine",
                               help=f"ray: the cluster at GLASSBOX_RAY_ADDRESS ({config.ray_address()}).")
    with st.expander("Method parameters"):
        specs = {k: s for k, s in get_method(method).params.items() if s.kind != "array"}
        params = param_widgets(method, specs, key_prefix="gb_ds", choices=method_param_choices(model, method))
    ready = True
if not ready:
    st.stop()

run_key = repr((model.sha256, data_key, method, sorted(params.items()), target, shard_rows, engine_name))
followed = st.session_state.setdefault(JOBS_KEY, {})  # run key -> job id

if st.button("Explain the dataset", type="primary", key="gb_ds_run"):
    with state.error_boundary(f"Queueing the dataset run with {method}"):
        followed[run_key] = jobs.submit_dataset(model, dataset, method, params, target, shard_rows, engine_name).id

if run_key not in followed:
    if followed:
        st.info("The settings changed since the last run: explain the dataset again.")
    st.stop()

run = None
with state.error_boundary(f"Explaining the dataset with {method}"):
    job, run = jobs.follow_job(followed[run_key], f"Explaining {len(dataset)} rows with {method}",
                               lambda arrays: render_summary(model, partial_view(arrays, model.modality), "ds_live"))
    if job.status == "cancelled":
        del followed[run_key]
        st.info("The dataset run was cancelled.")

if run is not None:
    info = run.info
    st.success(f"Explained {info.summary['rows']} rows with {method} in {info.summary['seconds']:.1f} s "
               f"({info.summary['engine']}).")
    with state.error_boundary("Drawing the summaries"):
        render_summary(model, saved_dataset(run, model.modality), "ds_final")
        render_download(run.results)
        team.render_share_link(f"Saved as run `{info.id}`. Link to it:", run=info.id)
