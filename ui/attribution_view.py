"""Place attribution results on a page: methods side by side, one row per input."""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from explain.attribution import Attribution, step_raising_text
from explain.inputs.tabular import feature_names
from explain.inputs.text import display_text
from explain.model import LoadedModel
from explain.output.agreement import agreement_matrix
from explain.output.methods.base import completeness_caption
from explain.output.metrics.quality import Results
from explain.spreadsheet import spreadsheet_safe
from explain.viz import attribution as viz
from ui.figures import figure_config, figure_format_choice
from ui.map_view import MapOptions, draw_map
from ui.quality_view import render_quality_line
from ui.text import escape_markdown


def map_controls(modality: str) -> MapOptions:
    """The Output page's controls for image maps (defaults for other modalities)."""
    if modality != "image":
        return MapOptions()
    c1, c2, c3 = st.columns([3, 3, 2])
    sign = c1.radio("Show", viz.SIGNS, horizontal=True, key="gb_sign",
                    help="all: red supports the target, blue is against it; absolute: either way.")
    view = c2.radio("View", viz.VIEWS, horizontal=True, key="gb_view",
                    help="overlay: the map over a grey-scale copy of the input; side by side: the input, then the map.")
    scale = c3.radio("Colour scale", viz.SCALES, horizontal=True, key="gb_scale",
                     help="shared: one limit for all inputs of a method, so their maps compare; "
                          "per map: each map uses its own range.")
    return MapOptions(sign, view, scale)


def render_prediction(model: LoadedModel, probs: np.ndarray, label: int | None, key: str) -> None:
    names = model.spec.class_names or [str(i) for i in range(len(probs))]
    pred = int(np.argmax(probs))
    truth = f" · true: {names[label]}" if label is not None and 0 <= label < len(names) else ""
    st.markdown(f"**{escape_markdown(names[pred])}** ({probs[pred]:.1%}){escape_markdown(truth)}")
    st.plotly_chart(viz.probabilities_figure(probs, names, height=30 + 22 * min(5, len(probs))),
                    config={"displayModeBar": False}, key=key)


def render_grid(
    model: LoadedModel, attrs: Sequence[Attribution], rows: Sequence[int], probs: np.ndarray,
    labels: np.ndarray | None, options: MapOptions = MapOptions(), quality: Results | None = None,
) -> None:
    """One column per method, one row per input (``rows`` index into the batch); under each map
    its caption and, with ``quality`` (``results[method][metric]``), its quality line."""
    modality = model.modality
    header = st.columns([1] + [1] * len(attrs))
    header[0].markdown("**Input · prediction**")
    for col, attr in zip(header[1:], attrs):
        col.markdown(f"**{attr.method}**  \ntarget: {escape_markdown(model.spec.class_name(int(attr.target[0])))}"
                     if len(set(attr.target.tolist())) == 1 else f"**{attr.method}**")
        raising = step_raising_text(attr.params)  # what IG's tolerance did to the steps, within its budget
        if raising:
            col.caption(escape_markdown(raising))
    if modality == "image":
        images = viz.to_display_images(attrs[0].inputs, model.spec)
        limits = [viz.map_limits(a, rows, options.sign, options.scale) for a in attrs]  # per method [N]
    for r in rows:
        cols = st.columns([1] + [1] * len(attrs))
        label = int(labels[r]) if labels is not None else None
        with cols[0]:
            if modality == "image":
                st.image(images[r], width=160, caption=f"input {r}")
            elif modality == "text":
                st.markdown(f"input {r}: " + escape_markdown(display_text(attrs[0].inputs[r], model.spec)))
            else:
                st.markdown(f"row {r}")
            render_prediction(model, probs[r], label, key=f"probs_{r}")
        for k, (col, attr) in enumerate(zip(cols[1:], attrs)):
            with col:
                target_name = model.spec.class_name(int(attr.target[r]))
                render_attribution(model, attr, r, f"→ {target_name}", key=f"map_{attr.method}_{r}_of_{len(attrs)}",
                                   limit=limits[k][r] if modality == "image" else None, options=options)
                if quality:
                    render_quality_line(quality.get(attr.method, {}), r)


def render_attribution(model: LoadedModel, attr: Attribution, row: int, title: str, key: str,
                       limit: float | None = None, options: MapOptions = MapOptions()) -> None:
    """One input's map and its caption (`ui.map_view.draw_map`, its completeness judged against the method's
    tolerance): each cell of the Output page's grid, and the Overview's map. ``limit``: the image's colour
    limit (default `viz.map_limits` over the attribution's rows)."""
    draw_map(model.spec, attr, row, title, key, completeness_caption(attr, row), limit=limit, options=options)


def render_layer_attribution(model: LoadedModel, result, x: np.ndarray, key: str) -> None:
    """One input's attribution to a layer (`viz.layer_attribution_figure`: a map over the picture, token
    highlights or bars per unit) and its completeness against f(x) − f(baseline): the Overview's layer map."""
    target = model.spec.class_name(int(result.target[0]))
    title = f"{result.layer} · {result.method.replace('_', ' ')} → {target}"
    drawn = viz.layer_attribution_figure(result, x, model.spec, title)
    if isinstance(drawn, str):
        st.caption(escape_markdown(title))
        st.html(drawn)
    else:
        st.plotly_chart(drawn, config={"displayModeBar": False}, key=key)
    err_text, exceeded = result.completeness_text(0)
    st.caption(f"Σ over the layer {result.values[0].sum():.4g} vs f(x) − f(baseline) "
               f"{result.output[0] - result.base_value[0]:.4g} · {result.steps} steps · "
               + (f":orange[**{err_text}**]" if exceeded else
                  f"{err_text} (exact only for a layer every path goes through)"))


def render_summary(model: LoadedModel, attrs: Sequence[Attribution]) -> None:
    """Tabular: beeswarm summary per method; every modality: agreement between methods."""
    if model.modality == "tabular" and len(attrs[0]) >= 5:
        st.subheader("Summary over all inputs")
        cols = st.columns(len(attrs))
        names = feature_names(model.spec)
        for col, attr in zip(cols, attrs):
            with col:
                fig = viz.tabular_summary_figure(attr.values, attr.inputs, names, title=attr.method)
                st.plotly_chart(fig, config=figure_config(f"{attr.method}_summary"), key=f"summary_{attr.method}")
    if len(attrs) >= 2:
        st.subheader("Agreement between methods")
        st.caption("Mean Spearman rank correlation of the maps, per input, averaged over inputs.")
        matrix = agreement_matrix(attrs)
        st.plotly_chart(viz.agreement_figure([a.method for a in attrs], matrix),
                        config=figure_config("agreement"), key="agreement")


def attributions_csv(model: LoadedModel, attrs: Sequence[Attribution]) -> bytes:
    """One row per (method, input, position): the download's CSV. A position's name may be a feature name
    an uploaded spec chose: its cells go through `spreadsheet_safe`, so no formula runs where it is opened."""
    rows = []
    for a in attrs:
        flat = np.asarray(a.values).reshape(len(a), -1)
        names = [spreadsheet_safe(n) for n in _position_names(model, flat.shape[1])]
        for i in range(len(a)):
            rows.extend({"method": spreadsheet_safe(a.method), "input": i, "target": int(a.target[i]),
                         "position": names[j], "attribution": float(flat[i, j])} for j in range(flat.shape[1]))
    return pd.DataFrame(rows).to_csv(index=False).encode()


def render_downloads(model: LoadedModel, attrs: Sequence[Attribution]) -> None:
    npz = io.BytesIO()
    arrays = {}
    for a in attrs:
        for key, value in a.to_npz_dict().items():
            arrays[f"{a.method}/{key}"] = value
    np.savez_compressed(npz, **arrays)
    csv = attributions_csv(model, attrs)
    figure_format_choice()
    c1, c2 = st.columns(2)
    c1.download_button("Download attributions (.npz)", npz.getvalue(), "attributions.npz", "application/octet-stream")
    c2.download_button("Download attributions (.csv)", csv, "attributions.csv", "text/csv")


def _position_names(model: LoadedModel, width: int) -> list[str]:
    if model.modality == "tabular" and model.spec.input_shape[0] == width:
        return feature_names(model.spec)
    if model.modality == "image":
        c, h, w = model.spec.input_shape
        return [f"c{ci}_y{y}_x{x}" for ci in range(c) for y in range(h) for x in range(w)]
    return [f"t{j}" if model.modality == "text" else f"x{j}" for j in range(width)]
