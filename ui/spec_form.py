"""The spec form: how to feed a model that carries no spec, written in the page (widgets only).

Parsing and checking the fields is `explain.spec.build_spec`'s; the form only
prefills them from a `SpecGuess` (a ``.pt2`` signature, the uploaded inputs,
the model's first layer) and offers the resulting JSON for download, so the
same spec works with ``python -m explain ... --spec``.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from explain.errors import GlassboxError
from explain.spec import MODALITIES, InputSpec, SpecGuess, build_spec, parse_vocabulary
from ui.text import escape_markdown

SHAPE_EXAMPLES = {"image": "3, 32, 32", "tabular": "30", "text": "64"}


def shape_prefill(guess: SpecGuess | None) -> str:
    """The shape field's start: the guess's sizes, ``?`` where a size is open."""
    if guess is None or guess.input_shape is None:
        return ""
    return ", ".join("?" if d is None else str(d) for d in guess.input_shape)


def render_spec_form(guess: SpecGuess | None, name: str, current: InputSpec | None = None,
                     key: str = "gb_spec_form") -> InputSpec | None:
    """Draw the form, prefilled from ``current`` (a spec that did not fit) or ``guess``.

    Returns:
        The spec when the user submitted fields that make one, else None (a
        field that does not is named in an error under the form).
    """
    modality = current.modality if current else (guess.modality if guess and guess.modality else "image")
    shape = ", ".join(str(d) for d in current.input_shape) if current else shape_prefill(guess)
    if guess is not None and current is None and guess.input_shape is not None:
        open_dims = " (replace each ? with a size)" if guess.dynamic_dims else ""
        st.caption(f"Prefilled from {escape_markdown(guess.source)}: {guess.dtype} inputs of shape "
                   f"{guess.shape_text()}{open_dims}.")
    with st.form(key):
        c1, c2 = st.columns([1, 2])
        chosen = c1.selectbox("Modality", MODALITIES, index=MODALITIES.index(modality), key=f"{key}_modality")
        shape_text = c2.text_input(
            "Input shape (one sample, no batch dim)", value=shape, key=f"{key}_shape",
            placeholder=f"e.g. {SHAPE_EXAMPLES[modality]}", help="C, H, W for images; F for tabular; L for text.",
        )
        classes = st.text_area(
            "Class names (optional)", value="\n".join(current.class_names) if current else "", key=f"{key}_classes",
            help="One per output logit, one per line or comma-separated. Empty: class 0, class 1, …", height=80,
        )
        features = st.text_area(
            "Feature names (tabular, optional)", key=f"{key}_features", height=68,
            value="\n".join(current.feature_names) if current and current.feature_names else "",
            help="One per feature, in model order.",
        )
        vocabulary_file = st.file_uploader(
            "Vocabulary (text, optional)", type=["txt", "json"], key=f"{key}_vocabulary",
            help="One token per line (line n = token id n), a JSON list, or a JSON {token: id} object.",
        )
        submitted = st.form_submit_button("Use this spec", type="primary")
    if not submitted:
        return None
    try:
        vocabulary = (parse_vocabulary(vocabulary_file.getvalue(), vocabulary_file.name)
                      if vocabulary_file is not None and chosen == "text" else None)
        return build_spec(chosen, shape_text, classes, features, vocabulary, name=name)
    except GlassboxError as exc:
        st.error(escape_markdown(exc.message), icon="✏️")
        return None


def render_spec_download(spec: InputSpec, name: str, key: str, show_json: bool = False) -> None:
    """A download button for ``spec`` as JSON (for ``--spec`` or the next upload)."""
    text = spec.to_json(indent=2)
    if show_json:
        st.code(text, language="json")
    st.download_button("Download spec JSON", text, file_name=f"{Path(name).stem or 'model'}.spec.json",
                       mime="application/json", key=key)
