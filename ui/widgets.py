"""Widgets built from `ParamSpec`s (select boxes for the values a model offers), and captions of skipped layers."""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import streamlit as st

from explain.model import LoadedModel
from explain.params import ParamSpec
from ui.text import escape_markdown


@st.cache_resource(max_entries=64, show_spinner=False)
def _param_choices(model_sha: str, spec_key: str, method: str, _model: LoadedModel) -> dict[str, list[Any]]:
    from explain.output.methods import get_method

    return get_method(method).param_choices(_model)


def method_param_choices(model: LoadedModel, method: str) -> dict[str, list[Any]]:
    """`Explainer.param_choices` of ``method`` on ``model`` (e.g. Grad-CAM's candidate layers),
    asked once per model and spec: the choices `param_widgets` offers for those parameters."""
    return _param_choices(model.sha256, repr(model.spec.to_dict()), method, model)


def param_widget(method: str, name: str, spec: ParamSpec, key_prefix: str = "gb",
                 choices: Sequence[Any] | None = None) -> Any:
    """One Streamlit widget for one parameter; returns its value.

    ``choices``: the values the parameter can take on this model (`method_param_choices`):
    a select box of them, the spec's default when it is one, else the first (marked
    "default"), whatever the spec's kind.
    """
    key = f"{key_prefix}_{method}_{name}"
    label = name.replace("_", " ")
    if choices:
        options = list(choices)
        index = options.index(spec.default) if spec.default in options else 0
        key += f"_{zlib.crc32(repr(options).encode()):08x}"  # another model's list: a fresh box
        return st.selectbox(label, options, index=index, help=spec.help or None, key=key,
                            format_func=lambda v: f"{v} (default)" if v == options[index] else str(v))
    if spec.kind == "bool":
        return st.checkbox(label, value=bool(spec.default), help=spec.help or None, key=key)
    if spec.kind == "choice":
        choices = list(spec.choices or [spec.default])
        return st.selectbox(label, choices, index=choices.index(spec.default) if spec.default in choices else 0,
                            help=spec.help or None, key=key)
    if spec.kind == "int":
        return st.number_input(label, value=int(spec.default),
                               min_value=int(spec.minimum) if spec.minimum is not None else None,
                               max_value=int(spec.maximum) if spec.maximum is not None else None,
                               step=1, help=spec.help or None, key=key)
    if spec.kind == "float":
        return st.number_input(label, value=float(spec.default),
                               min_value=float(spec.minimum) if spec.minimum is not None else None,
                               max_value=float(spec.maximum) if spec.maximum is not None else None,
                               help=spec.help or None, key=key, format="%.4g")
    return st.text_input(label, value=str(spec.default), help=spec.help or None, key=key)


def param_widgets(method: str, specs: dict[str, ParamSpec], key_prefix: str = "gb",
                  choices: dict[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Widgets for every parameter of a method, in declaration order; ``choices``: parameter ->
    the values it can take on this model (`method_param_choices`), offered in a select box."""
    choices = choices or {}
    return {name: param_widget(method, name, spec, key_prefix, choices.get(name)) for name, spec in specs.items()}


def caption_skipped_layers(skipped: dict[str, str], verb: str) -> None:
    """One caption per reason: "<verb>: layer, layer (reason)." for the layers a view left out."""
    by_reason: dict[str, list[str]] = {}
    for layer, why in skipped.items():
        by_reason.setdefault(why, []).append(layer)
    for why, layers in by_reason.items():
        st.caption(escape_markdown(f"{verb}: {', '.join(layers)} ({why})."))
