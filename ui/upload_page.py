"""The main area while an upload is not ready: why, and the way forward (the spec form).

In upload mode the views only run once the uploaded model loads; until then
every page shows this instead, so the bundled sample is never explained in
place of the user's model (nor with the user's inputs).
"""
from __future__ import annotations

import streamlit as st

from explain.errors import IncompatibleInput
from explain.loading.export_lm import NO_TOKENIZER
from explain.loading.weights import WeightsRefused
from explain.spec import SpecNeeded
from ui import state
from ui.spec_form import render_spec_download, render_spec_form
from ui.text import escape_markdown

TITLE = "Your model"


def render_pending_upload() -> bool:
    """Draw the upload's state when the views cannot run yet.

    Returns:
        True when this drew the page (the chosen view must not run), False
        when there is nothing pending (sample mode, or the upload loads).
    """
    if not state.upload_mode():
        return False
    blob = state.model_upload()
    if blob is None:
        st.title(TITLE)
        st.info("Upload a checkpoint in the sidebar (safetensors, .pt/.pth/.ckpt, TorchScript, .pt2, or a "
                "Hugging Face model folder as a .zip), or choose Sample model.", icon="⬆️")
        _inputs_note()
        return True
    failure = state.upload_failure()
    if failure is None:
        return False
    st.title(TITLE)
    st.error(escape_markdown(f"{blob.name} does not load: {failure.reason}"), icon=":material/block:")
    # unsafe, corrupt, too large, or weights no architecture fits: no spec fixes the file; a causal .pt2 without
    # its tokenizer: the form has no tokenizer, the hint says where it goes (in the .pt2, or a spec JSON)
    if not isinstance(failure, IncompatibleInput) or isinstance(failure, WeightsRefused) or failure.reason == NO_TOKENIZER:
        if failure.hint:
            st.info(escape_markdown(failure.hint))
        return True
    if isinstance(failure, SpecNeeded):
        st.info("Tell Glassbox how to feed it, whichever is at hand: fill in the spec below, upload a spec "
                "JSON in the sidebar, or upload model-ready inputs in the sidebar (.npy/.npz: float N×C×H×W "
                "image, float N×F tabular, integer N×L text token ids).", icon="🧭")
    else:
        st.info("Correct the spec below (or upload another spec JSON / model-ready inputs in the sidebar).", icon="🧭")
    _inputs_note()
    current = state.form_spec()
    guess = getattr(failure, "guess", None)
    if guess is None or guess.input_shape is None:
        guess = state.inputs_guess() or guess
    spec = render_spec_form(guess, name=blob.name.split(".")[0] or "model", current=current)
    if spec is not None:
        state.set_form_spec(spec)
        st.rerun()
    if current is not None:
        with st.expander("The spec from the form", expanded=False):
            render_spec_download(current, blob.name, key="gb_form_spec_download", show_json=True)
    return True


def _inputs_note() -> None:
    blobs = state.input_uploads()
    if blobs:
        names = ", ".join(b.name for b in blobs[:5]) + (" …" if len(blobs) > 5 else "")
        st.caption(f"Inputs ready: {escape_markdown(names)}.")
