"""What the model is fed: uploaded pictures next to the model's input after preprocessing, and the
warning when every prediction is one class (widgets only; the checks are the library's). Torch-free: the
app's first paint draws the Overview's preprocessing expander too (`render_preprocessing_of`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from explain.inputs.images import describe_preprocessing
from explain.inputs.reading import InputBatch
from explain.output.prediction_checks import one_class_warning
from explain.spec import InputSpec
from ui.text import escape_markdown

if TYPE_CHECKING:
    from explain.model import LoadedModel

#: Pictures shown in the preprocessing preview.
PREVIEW_ITEMS = 4


def render_preprocessing(model: LoadedModel, batch: InputBatch, rows: Sequence[int] | None = None,
                         expanded: bool = False) -> None:
    """For an image model: each uploaded picture beside the model's input after preprocessing,
    with the preprocessing named (the model's own image processor, or the spec's resize and mean / std)."""
    render_preprocessing_of(model.spec, batch, rows, expanded)


def render_preprocessing_of(spec: InputSpec, batch: InputBatch, rows: Sequence[int] | None = None,
                            expanded: bool = False) -> None:
    """`render_preprocessing` of a model with ``spec`` (nothing for a model that is not an image model)."""
    if spec.modality != "image":
        return
    how = describe_preprocessing(spec)
    originals = batch.originals or [None] * len(batch)
    shown = [r for r in (rows if rows is not None else range(len(batch))) if 0 <= r < len(batch)][:PREVIEW_ITEMS]
    with st.expander("Inputs after preprocessing", expanded=expanded):
        st.caption(f"Preprocessing: {escape_markdown(how)}")
        for r in shown:
            cols = st.columns(2)
            name = batch.source_names[r] if r < len(batch.source_names) else f"input {r}"
            if originals[r] is not None:
                h, w = originals[r].shape[:2]
                cols[0].image(originals[r], width=160, caption=f"{name} as uploaded ({w}×{h})")
            else:
                cols[0].caption(f"{name}: a model-ready array (no picture to preprocess)")
            c, h, w = spec.input_shape
            cols[1].image(np.asarray(batch.display[r]), width=160, caption=f"model input #{r} ({w}×{h})")


def render_input_notes(batch: InputBatch) -> None:
    """What reading the inputs left out or assumed (a CSV's ignored columns, its label column)."""
    for note in batch.notes[:5]:
        st.caption(f"ℹ️ {escape_markdown(note)}")


def render_prediction_warning(model: LoadedModel, probs: np.ndarray) -> None:
    """The library's one-class warning (`one_class_warning`), when it applies."""
    warning = one_class_warning(probs, model.spec)
    if warning:
        st.warning(escape_markdown(warning), icon="⚠️")
