"""The shared sidebar: pick a sample or upload a model, a spec and inputs."""
from __future__ import annotations

import streamlit as st

from explain.config import max_upload_mb
from sample_models import SAMPLE_NAMES
from ui import state
from ui.text import escape_markdown

SAMPLE_LABELS = {
    "shapes": "Shapes — image, residual CNN",
    "cancer": "Breast cancer — tabular MLP",
    "sentiment": "Sentiment — text transformer",
}
MODEL_TYPES = ["safetensors", "pt", "pth", "ckpt", "bin", "pt2", "zip", "jit", "ts"]
INPUT_TYPES = ["npy", "npz", "png", "jpg", "jpeg", "csv", "txt"]


def _on_sample_change() -> None:
    state.set_sample(st.session_state["gb_sample_select"])


def render_sidebar() -> None:
    """Draw the model/input chooser and a short model card."""
    with st.sidebar:
        st.header("Model")
        source = st.radio(
            "Source", ["Sample model", "Upload"], horizontal=True, key="gb_source_radio",
            index=1 if state.model_upload() is not None else 0,
        )
        if source == "Sample model":
            current = st.session_state.get("gb_sample", state.DEFAULT_SAMPLE)
            st.selectbox(
                "Sample", SAMPLE_NAMES, index=SAMPLE_NAMES.index(current), key="gb_sample_select",
                format_func=lambda n: SAMPLE_LABELS.get(n, n), on_change=_on_sample_change,
            )
            if state.model_upload() is not None:
                state.set_model_upload(None, None)
                state.set_input_uploads([])
        else:
            _render_uploads()
        _render_model_card()
        state.show_trusted_banner()


def _render_uploads() -> None:
    model_file = st.file_uploader(
        "Checkpoint", type=MODEL_TYPES, key="gb_model_file",
        help="safetensors, weights-only state_dict / checkpoint (.pt/.pth/.ckpt), TorchScript, torch.export .pt2. "
        f"Up to {max_upload_mb()} MB.",
    )
    spec_file = st.file_uploader("Spec (optional JSON)", type=["json"], key="gb_spec_file")
    input_files = st.file_uploader(
        "Inputs (optional)", type=INPUT_TYPES, accept_multiple_files=True, key="gb_input_files",
        help=".npy/.npz model-ready arrays, images, .csv rows or .txt (one text per line).",
    )
    if model_file is not None:
        blob = state.UploadedBlob.from_upload(model_file)
        spec = state.UploadedBlob.from_upload(spec_file) if spec_file is not None else None
        old = state.model_upload()
        if old is None or old.sha256 != blob.sha256 or st.session_state.get("gb_spec_upload") != spec:
            state.set_model_upload(blob, spec)
    state.set_input_uploads([state.UploadedBlob.from_upload(f) for f in input_files or []])
    error = state.upload_error()
    if error:
        st.error(escape_markdown(error), icon="🚫")
        st.caption("Showing the sample model until an upload loads.")


def _render_model_card() -> None:
    try:
        model = state.current_model()
    except Exception as exc:
        state.show_error(exc, "Loading the model")
        return
    st.caption(
        f"**{escape_markdown(model.name)}** · {model.format} · {model.modality} · "
        f"{model.parameter_count():,} parameters · sha256 `{model.sha256[:12]}`"
    )
