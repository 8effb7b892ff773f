"""Compare: two model versions side by side — outputs, explanations, structure, training.

URL contract: ``?a=NAME@vN`` (or ``NAME@ALIAS``) and ``?b=...``; with only ``a``, B is
``NAME@production`` (the version page's "compare with production" link). Any two registry
versions or two uploaded files can be picked; the comparison is a ``compare`` job saved as a
``comparison`` run with its link.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from explain.digest import digest_array, digest_bytes
from explain.errors import NotFound, UsageError, one_line
from explain.inputs.reading import read_inputs
from explain.output.methods import compatible_methods
from explain.service.client import model_name_from_file, register_model
from sample_models import SAMPLE_NAMES, sample_inputs
from ui import state
from ui import workspace as team
from ui.compare_view import comparison_summary, default_refs, render_comparison, version_model
from ui.jobs import follow_request, submit_compare
from ui.text import escape_markdown

st.title("Compare versions")
st.caption("What changed from version A to version B on the same inputs: outputs, what each version attends to "
           "(both explained for A's predicted class), structure and training.")
ws, who = team.workspace(), team.actor()
team.stop_unless_may_explain()

chosen = False
with state.error_boundary("Choosing the versions"):
    source = st.radio("Compare", ("Registry versions", "Uploaded files"), horizontal=True, key="gb_compare_source")
    if source == "Registry versions":
        versions = ws.registry.list(who)
        refs = [v.ref for v in versions]
        if not refs:
            st.info("No model versions in the workspace yet.")
            st.stop()
        query_a, query_b = default_refs(st.query_params.get("a"), st.query_params.get("b"))
        picked = []
        for side, asked in (("A", query_a), ("B", query_b)):
            index = 0 if side == "A" else min(1, len(refs) - 1)
            if asked:
                try:
                    index = refs.index(ws.registry.resolve(who, asked).ref)
                except (NotFound, UsageError) as exc:
                    st.warning(f"{escape_markdown(asked)}: {escape_markdown(one_line(exc))} Choose {side} below.")
            picked.append(ws.registry.resolve(who, st.selectbox(f"Version {side}", refs, index=index,
                                                                key=f"gb_compare_{side}")))
        info_a, info_b = picked
    else:
        uploads = [st.file_uploader(f"Model file {side}", key=f"gb_compare_upload_{side}") for side in ("A", "B")]
        if not all(uploads):
            st.info("Upload both model files (each registered as a version when compared).")
            st.stop()
        infos = []
        for up in uploads:
            data = up.getvalue()
            model = state.open_model(data, digest_bytes(data), f"Loading {up.name}…", filename=up.name)
            infos.append(register_model(ws, who, model, data, up.name, model_name_from_file(up.name)))
        info_a, info_b = infos
    model_a, model_b = version_model(info_a), version_model(info_b)
    chosen = True
if not chosen:
    st.stop()

inputs = None
with state.error_boundary("Reading the inputs"):
    uploaded = st.file_uploader("Inputs both versions run on (.npy / .npz, images, .csv, .txt)",
                                accept_multiple_files=True, key="gb_compare_inputs")
    if uploaded:
        inputs = np.concatenate([np.asarray(read_inputs(u.getvalue(), model_a.spec, filename=u.name).array)
                                 for u in uploaded])
    elif info_a.name in SAMPLE_NAMES:
        inputs = sample_inputs(info_a.name)["inputs"][:16]
        st.caption(f"The {escape_markdown(info_a.name)} sample's first {len(inputs)} inputs.")
    else:
        st.info("Upload the inputs to compare the versions on.")
        st.stop()

if inputs is None:
    st.stop()
with state.error_boundary("Comparing the versions"):
    fits_b = {m.name for m in compatible_methods(model_b)}
    names = [m.name for m in compatible_methods(model_a) if m.name in fits_b]
    if not names:
        raise UsageError("No attribution method fits both versions.")
    method = st.selectbox("Method", names, index=names.index("integrated_gradients")
                          if "integrated_gradients" in names else 0, key="gb_compare_method")
    params = {"steps": int(st.number_input("Steps", 4, 256, 32, key="gb_compare_steps"))} \
        if method == "integrated_gradients" else {}
    key = f"{info_a.ref}|{info_b.ref}|{method}|{params}|{digest_array(inputs)}"
    if st.button("Compare", type="primary", key="gb_compare_go"):
        st.session_state["gb_compare_asked"] = key
    if st.session_state.get("gb_compare_asked") == key:
        run = follow_request("gb_compare_jobs", key, lambda: submit_compare(
            info_a, info_b, model_a, model_b, inputs, method, params), f"Comparing {info_a.ref} with {info_b.ref}")
        if run is not None:
            from explain.compare.job import saved_comparison

            comparison = saved_comparison(run)
            st.success(comparison_summary(comparison))
            team.render_share_link(f"Saved as run `{run.info.id}`. Link to it:", run=run.info.id)
            render_comparison(comparison, model_a.spec)
