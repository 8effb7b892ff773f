"""The Dataset page's glue: the dataset a session chose, and a run's summaries placed on a page."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st

from explain.dataset.job import DatasetView
from explain.dataset.reading import Dataset, from_batch, read_dataset
from explain.inputs.tabular import feature_names
from explain.model import LoadedModel
from explain.viz import dataset as viz
from ui import state
from ui.state import UploadedBlob
from ui.text import escape_markdown

UPLOADS_KEY = "gb_ds_uploads"  # list[UploadedBlob]: the dataset files this session uploaded
DATASET_TYPES = ["npz", "npy", "csv", "tsv", "txt", "zip", "png", "jpg", "jpeg"]


def keep_uploads(widget_key: str) -> None:
    """The uploader's on_change: keep the files' bytes in the session (removing them clears it)."""
    files = st.session_state.get(widget_key) or []
    st.session_state[UPLOADS_KEY] = [UploadedBlob.from_upload(f) for f in files]


def current_dataset(model: LoadedModel) -> tuple[Dataset, str]:
    """The uploaded dataset (one file, or several images), else the page's current inputs; and a key for it."""
    blobs: list[UploadedBlob] = st.session_state.get(UPLOADS_KEY) or []
    if not blobs:
        batch = state.current_inputs()
        from explain.digest import digest_array

        return from_batch(batch, model.spec, "the current inputs"), digest_array(batch.array)
    key = ",".join(b.sha256 for b in blobs)
    if len(blobs) == 1:
        return read_dataset((blobs[0].name, blobs[0].data), model.spec), key
    return read_dataset([(b.name, b.data) for b in blobs], model.spec, filename=f"{len(blobs)} images"), key


def render_summary(model: LoadedModel, view: DatasetView, key: str) -> None:
    """The summaries of the shards finished so far: a table and the modality's figures (the
    beeswarm once every row's attributions are at hand)."""
    summary = view.summary
    spec = model.spec
    key = f"{key}_{summary.shards_done}"  # a partial summary per shard in one script run: keys must differ
    st.caption(f"{summary.rows} of {summary.total_rows} rows · {summary.shards_done} of {summary.total_shards} shards"
               f" · {view.seconds:.1f} s")
    class_names = [spec.class_name(k) for k in range(len(summary.class_counts))]
    if model.modality == "tabular":
        names = feature_names(spec)
        c1, c2 = st.columns(2)
        with c1:
            st.markdown("**Mean |attribution| per feature**")
            st.plotly_chart(viz.mean_abs_figure(summary, names), config={"displayModeBar": False}, key=f"{key}_bars")
        with c2:
            st.markdown("**Every row (beeswarm)**")
            if view.values is not None and view.inputs is not None:
                st.plotly_chart(viz.beeswarm_figure(view.values, view.inputs, names),
                                config={"displayModeBar": False}, key=f"{key}_swarm")
            else:
                st.caption("Drawn when every shard is done.")
        table = pd.DataFrame({"feature": names, "mean |attribution|": summary.mean_abs})
        st.dataframe(table.sort_values("mean |attribution|", ascending=False), hide_index=True, key=f"{key}_table")
    elif model.modality == "image":
        st.markdown("**Class-mean maps** (mean attribution per explained class, channels summed)")
        st.plotly_chart(viz.class_mean_maps_figure(summary, class_names), config={"displayModeBar": False},
                        key=f"{key}_maps")
        st.dataframe(pd.DataFrame({"class": class_names, "rows": summary.class_counts}), hide_index=True,
                     key=f"{key}_table")
    else:
        st.markdown("**Top tokens per class** (summed attribution toward the class)")
        st.plotly_chart(viz.top_tokens_figure(summary, class_names), config={"displayModeBar": False},
                        key=f"{key}_tokens")
        rows = [{"class": class_names[k], "token": t.token, "summed attribution": t.total, "occurrences": t.count}
                for k, tokens in enumerate(summary.top_tokens) for t in tokens]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"{key}_table")


def render_download(arrays: dict[str, np.ndarray]) -> None:
    """The run's arrays as ``batch`` writes RUN.npz."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    st.download_button("Download the run (.npz)", buf.getvalue(), "run.npz", "application/octet-stream",
                       key="gb_ds_download")


def dataset_caption(model: LoadedModel, dataset: Dataset) -> str:
    labels = "with labels" if dataset.labels is not None else "no labels"
    return escape_markdown(f"{model.name} · {model.modality} · dataset {dataset.name}: {len(dataset)} rows, {labels}")
