"""The Overview's own pieces that need no model object, so the app's first paint (`ui.first_paint`) draws
them as the page does from a sample's saved first view (`explain.report.first_view`), with no torch
imported: the choice of input and method above the columns, the columns, the choice of weights above the
curves, the prediction line and the map's title. The page (`pages/views/overview.py`) draws them through these too, so the settled page puts
everything where the preview had it."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from explain.attribution import Attribution
from explain.report.first_view import DEFAULT_METHOD
from explain.spec import InputSpec
from ui.choice import choice_box
from ui.text import escape_markdown

#: the widgets' keys of the choice above the columns (`render_view_choice`)
INPUT_KEY, METHOD_KEY = "gb_ov_input", "gb_ov_method"
#: the Training column's first choice of weights (`render_weights_choice`): the model itself
FINAL = "final model"
_PREVIEW = "_first_paint"  # the preview's stand-ins are other widgets: the page's keep their own state


def render_view_choice(inputs: Sequence[int], input_label: Callable[[int], str], methods: Sequence[str],
                       caption: str, preview: bool = False) -> tuple[int, str]:
    """The row above the columns: the input, the method (`DEFAULT_METHOD` first chosen) and what the model is;
    the chosen ``(input, method)``. ``preview``: the first paint's stand-ins, disabled until the page draws."""
    top = st.columns([2, 2, 3])
    suffix = _PREVIEW if preview else ""
    index = choice_box(top[0], "Input", list(inputs), key=INPUT_KEY + suffix, format_func=input_label,
                       disabled=preview)
    method = top[1].selectbox("Method", list(methods), key=METHOD_KEY + suffix, disabled=preview,
                              index=list(methods).index(DEFAULT_METHOD) if DEFAULT_METHOD in methods else 0)
    top[2].caption(caption)
    return index, method


def input_label(spec: InputSpec, probs: np.ndarray) -> Callable[[int], str]:
    """How the input choice names input ``i`` of ``probs`` [N, K]: its number and predicted class."""
    return lambda i: f"#{i} · {spec.class_name(int(np.argmax(probs[i])))}"


def model_caption(name: str, fmt: str, modality: str, n: int) -> str:
    return (f"{escape_markdown(name)} · {fmt} · {modality} · {n} inputs. Choose a layer (Structure) or a "
            "checkpoint (Training): the Output column follows.")


def overview_columns() -> list:
    """The Output, Structure and Training columns (the layer table needs the room)."""
    return st.columns([1, 1.25, 1.1], gap="medium")


def render_weights_choice(checkpoints: Sequence[str], label_of: Callable[[str], str], preview: bool = False) -> str:
    """The Training column's choice of the weights the Output column explains: `FINAL` or a checkpoint's path.
    ``preview``: the first paint's stand-in (the final model), disabled until the page draws."""
    return st.selectbox("Explain with", [FINAL, *checkpoints], key="gb_ov_ckpt" + (_PREVIEW if preview else ""),
                        format_func=label_of, disabled=preview, help="Re-explain the input with this checkpoint's weights.")


def prediction_line(spec: InputSpec, p: np.ndarray, truth: int | None, weights: str | None = None) -> str:
    """The Output column's first line: the predicted class of ``p`` [K] and its probability, the true class
    (``truth``), the checkpoint whose ``weights`` explain it (None: the final model)."""
    k = int(np.argmax(p))
    return (f"**{escape_markdown(spec.class_name(k))}** ({p[k]:.1%})"
            + (f" · true: {escape_markdown(spec.class_name(int(truth)))}" if truth is not None else "")
            + (f" · weights: {escape_markdown(weights)}" if weights is not None else ""))


def map_title(spec: InputSpec, attr: Attribution) -> str:
    return f"{attr.method} → {spec.class_name(int(attr.target[0]))}"
