"""Dataset: explain a whole dataset shard by shard; global summaries appear as shards finish."""
from __future__ import annotations

import streamlit as st

from explain import config
from explain.dataset.run import DatasetRun, explain_dataset, make_engine
from explain.output.methods import compatible_methods, get_method
from ui import state
from ui.dataset_view import (
    DATASET_TYPES,
    current_dataset,
    dataset_caption,
    keep_uploads,
    render_download,
    render_summary,
)
from ui.widgets import param_widgets

DEFAULT_METHOD = "integrated_gradients"
RESULT_KEY = "gb_ds_result"  # (run key, DatasetRun) of the last finished run

st.title("Dataset explanations")
st.caption("Explain every row of a dataset: summaries over all of them, drawn as each shard finishes.")

ready = False
with state.error_boundary("Loading the model and the dataset"):
    model = state.current_model()
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
    choice = c2.selectbox("Target", range(len(targets)), format_func=lambda i: targets[i][0], key="gb_ds_target")
    target = targets[choice][1]
    shard_rows = int(c3.number_input("Rows per shard", min_value=1, max_value=4096, value=16, key="gb_ds_shard"))
    engine_name = "local"
    if config.ray_address():
        engine_name = st.radio("Run on", ["local", "ray"], horizontal=True, key="gb_ds_engine",
                               help=f"ray: the cluster at GLASSBOX_RAY_ADDRESS ({config.ray_address()}).")
    with st.expander("Method parameters"):
        specs = {k: s for k, s in get_method(method).params.items() if s.kind != "array"}
        params = param_widgets(method, specs, key_prefix="gb_ds")
    ready = True
if not ready:
    st.stop()

run_key = (model.sha256, data_key, method, repr(sorted(params.items())), target, shard_rows, engine_name)
stored = st.session_state.get(RESULT_KEY)

if st.button("Explain the dataset", type="primary", key="gb_ds_run"):
    st.session_state[RESULT_KEY] = None
    with state.error_boundary(f"Explaining the dataset with {method}"):
        run = DatasetRun(model, dataset, method, shard_rows)
        model_file = state.current_model_file()[0] if engine_name == "ray" else None
        engine = make_engine(engine_name, model, model_file)
        bar = st.progress(0.0, text=f"0 of {run.n_shards} shards")
        cancel = st.empty()
        cancel.button("Cancel", key="gb_ds_cancel")  # pressing it stops this script run at the next shard
        live = st.empty()
        for shard in explain_dataset(model, dataset, method, params, target=target, shard_rows=shard_rows,
                                     engine=engine):
            run.add(shard)
            bar.progress(len(run.results) / run.n_shards,
                         text=f"{len(run.results)} of {run.n_shards} shards · {run.rows_done} rows")
            with live.container():
                render_summary(model, run, "ds_live")
        bar.empty()
        cancel.empty()
        live.empty()
        st.session_state[RESULT_KEY] = (run_key, run)
        stored = st.session_state[RESULT_KEY]

if stored and stored[0] == run_key and stored[1].complete:
    run = stored[1]
    st.success(f"Explained {len(dataset)} rows with {method} in {run.seconds():.1f} s ({engine_name}).")
    with state.error_boundary("Drawing the summaries"):
        render_summary(model, run, "ds_final")
        render_download(run)
elif stored:
    st.info("The settings changed since the last run: explain the dataset again.")
