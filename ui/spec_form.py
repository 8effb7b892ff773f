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
#: Image normalisations offered by name: label -> (mean, std); None = the custom fields.
NORMALISATIONS = {
    "none (pixels on [0, 1])": ([], []),
    "ImageNet (mean 0.485, 0.456, 0.406 · std 0.229, 0.224, 0.225)": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "[-1, 1] (mean 0.5 · std 0.5)": ([0.5], [0.5]),
    "custom (mean and std below)": None,
}
RESIZES = ("stretch the picture to H × W", "shorter side to the size below, then centre crop H × W")


def _numbers(values: list[float] | None) -> str:
    return ", ".join(f"{v:g}" for v in values or [])


def normalisation_prefill(current: InputSpec | None) -> str:
    """The normalisation choice a spec's mean / std match (custom when none does)."""
    def rounded(values: list[float], n: int) -> list[float]:
        return [round(v, 4) for v in (values * n if len(values) == 1 else values)]

    mean, std = (current.mean or [], current.std or []) if current else ([], [])
    for label, preset in NORMALISATIONS.items():
        if preset is not None and rounded(preset[0], len(mean)) == rounded(mean, 1) \
                and rounded(preset[1], len(std)) == rounded(std, 1):
            return label
    return "custom (mean and std below)"


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
        st.markdown("**Images**: how a picture becomes the model's input (pixels are first scaled to [0, 1])")
        r1, r2 = st.columns([2, 1])
        resize_mode = r1.selectbox("Resize", RESIZES, index=1 if current and current.resize else 0,
                                   key=f"{key}_resize_mode")
        shorter = r2.number_input("Shorter side (px)", min_value=1, max_value=4096, step=1, key=f"{key}_resize",
                                  value=int(current.resize) if current and current.resize else 256,
                                  help="e.g. 256 for a 224 × 224 ImageNet model.")
        normalisation = st.selectbox("Normalisation", list(NORMALISATIONS), key=f"{key}_norm",
                                     index=list(NORMALISATIONS).index(normalisation_prefill(current)),
                                     help="Use the mean and std the model was trained with; without them "
                                          "every picture may land in one class.")
        n1, n2 = st.columns(2)
        mean_text = n1.text_input("Mean (custom)", value=_numbers(current.mean if current else None),
                                  key=f"{key}_mean", placeholder="e.g. 0.485, 0.456, 0.406")
        std_text = n2.text_input("Std (custom)", value=_numbers(current.std if current else None),
                                 key=f"{key}_std", placeholder="e.g. 0.229, 0.224, 0.225")
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
        preset = NORMALISATIONS[normalisation]
        mean, std = (mean_text, std_text) if preset is None else preset
        return build_spec(chosen, shape_text, classes, features, vocabulary, name=name, mean=mean, std=std,
                          resize=int(shorter) if resize_mode == RESIZES[1] else None)
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
