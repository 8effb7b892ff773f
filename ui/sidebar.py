"""The shared sidebar: pick a sample or upload a model, a spec and inputs (in any order).

Loading a model to run it needs the editor role (`explain.workspace.roles.Action.LOAD_MODEL`): a
viewer or reviewer gets no Source choice and no uploader, only the bundled samples' registered
versions and their saved runs as links, with a line saying why (the library refuses the load
anyway, `ui.state.current_model`).
"""
from __future__ import annotations

import streamlit as st

from explain.config import max_upload_mb
from explain.loading.model_start import prestart
from explain.workspace import Action
from sample_models import SAMPLE_NAMES
from ui import state
from ui import workspace as team
from ui.sample_choice import SAMPLE_LABELS, SOURCES, render_sample_choice, render_source_choice
from ui.spec_form import render_spec_download
from ui.text import escape_markdown
from ui.workspace import render_account

MODEL_TYPES = ["safetensors", "pt", "pth", "ckpt", "bin", "pt2", "zip", "jit", "ts"]
INPUT_TYPES = ["npy", "npz", "png", "jpg", "jpeg", "csv", "txt"]
#: where an upload's spec came from, when not from a file the user gave
SPEC_SOURCE_LABELS = {"signature": "from the .pt2 signature", "inputs": "inferred from the uploaded inputs",
                      "form": "from the spec form"}
RUNS_PER_SAMPLE = 3  # newest saved runs linked under each sample in a viewer's sidebar


def render_sidebar() -> None:
    """Draw the model/input chooser and a short model card."""
    with st.sidebar:
        st.header("Model")
        if not team.can(Action.LOAD_MODEL):
            _render_read_only()
            st.divider()
            render_account()
            return
        source = render_source_choice(state.model_upload() is not None or state.upload_mode())
        if source == SOURCES[0]:
            current = render_sample_choice()
            if state.model_upload() is not None:
                state.set_model_upload(None, None)
                state.set_input_uploads([])
            elif state.upload_mode():  # back from Upload before any model came
                state.set_sample(current)
        else:
            state.set_upload_mode()
            prestart()  # the sandbox that runs uploaded graphs starts while the person picks a file
            _render_uploads()
        if not state.upload_mode() or (state.model_upload() is not None and state.upload_failure() is None):
            _render_model_card()
        state.show_trusted_banner()
        st.divider()
        render_account()


def _render_read_only() -> None:
    """A viewer's or reviewer's sidebar: why no model is loaded here, and links to the bundled samples'
    registered versions and their newest saved runs (which open without running the model)."""
    if state.upload_mode() or state.model_upload() is not None:  # e.g. the role was lowered mid-session
        state.set_model_upload(None, None)
        state.set_input_uploads([])
        state.set_sample(state.DEFAULT_SAMPLE)
    st.caption(f"Loading or uploading a model needs the editor role; yours ({escape_markdown(team.role() or 'none')}) "
               "reads the samples' registered versions and saved runs.")
    with state.error_boundary("Listing the samples"):
        ws, who = team.workspace(), team.actor()
        versions = [v for v in ws.registry.list(who) if v.name in SAMPLE_NAMES]
        runs = ws.runs.list(who)
        for name in SAMPLE_NAMES:
            lines = []  # one per version, its newest runs listed under it
            for v in (v for v in versions if v.name == name):
                of_version = [r for r in runs if (r.model, r.version) == (v.name, v.version)]
                count = f"{len(of_version)} saved run{'' if len(of_version) == 1 else 's'}"
                lines.append(f"[v{v.version}](/?model={v.name}&version={v.version}) · {count}"
                             + "".join(f"\n- [{escape_markdown(r.title)}](/?run={r.id})"
                                       for r in of_version[:RUNS_PER_SAMPLE]))
            if lines:
                st.markdown(f"**{escape_markdown(SAMPLE_LABELS.get(name, name))}**  \n" + "\n\n".join(lines))
        st.markdown("[All saved runs](/runs) · [All models](/models)")


def _render_uploads() -> None:
    model_file = st.file_uploader(
        "Checkpoint", type=MODEL_TYPES, key="gb_model_file",
        help="safetensors, weights-only state_dict / checkpoint (.pt/.pth/.ckpt), TorchScript, torch.export .pt2, "
        f"or a Hugging Face model folder as a .zip (config.json and its weights). Up to {max_upload_mb()} MB.",
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
    seen = tuple(f.file_id for f in input_files or [])
    if st.session_state.get("gb_input_files_seen", ()) != seen:  # only what the widget changed
        st.session_state["gb_input_files_seen"] = seen
        state.set_input_uploads([state.UploadedBlob.from_upload(f) for f in input_files or []])
    failure = state.upload_failure()
    if failure is not None:  # the main area says why and the way forward: the reason is shown there, once
        st.error(escape_markdown(f"{state.model_upload().name} does not load."), icon=":material/block:")
        st.caption("The page says why. The page stays on your upload until it loads.")
    elif state.model_upload() is None:
        st.caption("Inputs may come before or after the model; a model without a spec takes it from "
                   ".npy/.npz inputs.")


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
    if (model.extra.get("sandbox") or {}).get("rows_mix"):
        st.caption(":material/warning: A row's output depends on the other rows of its batch (the sandbox found "
                   "it): Glassbox runs this model one row at a time, so each row's explanation is its own.")
    source = model.extra.get("spec_source")
    if source == "explicit" and st.session_state.get("gb_spec_upload") is None and state.form_spec() is not None:
        source = "form"
    if state.current_sample_name() is None and source in SPEC_SOURCE_LABELS:
        st.caption(f"Spec {SPEC_SOURCE_LABELS[source]}.")
        render_spec_download(model.spec, model.name, key="gb_sidebar_spec_download")
