"""The Quality tab of the Output page and the quality line under each map.

Widgets (`quality_controls`) -> the Output page's job measures them (`explain.service.runners`
with `explain.output.metrics`) -> the table and the `explain.viz.quality` figures the report
draws too (`render_quality_results`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from explain.model import LoadedModel
from explain.output.metrics import compatible_metrics, get_metric
from explain.output.metrics.base import MetricResult
from explain.output.metrics.masks import read_masks
from explain.output.metrics.quality import Results, badge, default_metrics, quality_findings, quality_rows
from explain.viz import quality as viz
from ui import state
from ui.text import escape_markdown
from ui.widgets import param_widgets

#: session key of the latest quality findings: (model sha256, [Finding]); the Overview shows them.
FINDINGS_KEY = "gb_quality_findings"


@dataclass(frozen=True)
class QualityRequest:
    """What the Quality tab asks to measure, in the Output page's job: metric names (only those
    that can run: localisation needs masks), their parameters, and the masks of the explained rows."""

    metrics: list[tuple[str, dict[str, Any]]]
    masks: np.ndarray | None  # [N, ...] for the explained rows, or None
    wanted_masks: bool  # a chosen metric needs masks that are not there


def quality_controls(model: LoadedModel, masks: np.ndarray | None, rows: Sequence[int]) -> QualityRequest:
    """The Quality tab's widgets: metrics, their parameters and (without the sample's) a masks upload.

    Args:
        masks: ground truth for the whole batch ([N, ...]) or None; ``rows`` the batch rows explained.
    """
    metrics = compatible_metrics(model)
    c1, c2 = st.columns([3, 2])
    if masks is None:
        upload = c2.file_uploader("Ground-truth masks (.npy / .npz)", type=["npy", "npz"], key="gb_q_masks",
                                  help="One boolean mask per input, shaped like the map (H x W for images): "
                                       "enables the pointing game and relevance mass.")
        masks = _read_masks(upload) if upload is not None else None
    else:
        c2.caption("Ground-truth masks: the sample's.")
    shown_masks = None
    if masks is not None:
        with state.error_boundary("Reading the masks"):
            shown_masks = np.asarray(masks)[list(rows)]
    defaults = default_metrics(model, shown_masks is not None)
    chosen = c1.multiselect(
        "Metrics", [m.name for m in metrics], default=defaults, key="gb_q_metrics",
        format_func=lambda n: get_metric(n).title,
        help="max_sensitivity and the randomisation check explain again (costly): chosen on demand.")
    params = {}
    if chosen:
        with st.expander("Metric parameters"):
            cols = st.columns(min(len(chosen), 4))
            for k, name in enumerate(chosen):
                with cols[k % len(cols)]:
                    st.markdown(f"**{get_metric(name).title}**")
                    params[name] = param_widgets(name, get_metric(name).params, key_prefix="gbq")
    runnable = [n for n in chosen if shown_masks is not None or not get_metric(n).needs_masks]
    return QualityRequest([(n, params.get(n, {})) for n in runnable], shown_masks, len(runnable) < len(chosen))


def render_quality_results(model: LoadedModel, results: Results, request: QualityRequest) -> None:
    """The measured table, curves and findings (kept for the Overview)."""
    if request.wanted_masks:
        st.caption("Pointing game and relevance mass need ground-truth masks: upload them above.")
    render_quality_table(results)
    st.session_state[FINDINGS_KEY] = (model.sha256, quality_findings(results))


def render_quality_table(results: Results) -> None:
    """The table of every metric of every method, with the curves and the findings."""
    rows = quality_rows(results)
    if not rows:
        st.info("Choose at least one metric.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="gb_q_table", column_config={
        "mean": st.column_config.NumberColumn(format="%.4f"), "random": st.column_config.NumberColumn(format="%.4f"),
        "better than chance by": st.column_config.NumberColumn(format="%+.4f"),
        "beats random on": st.column_config.NumberColumn(format="percent"),
        "seconds": st.column_config.NumberColumn(format="%.2f")})
    st.caption("Random: the same metric of a random attribution (each map's values shuffled), "
               "so every faithfulness number comes with its chance level.")
    cols = st.columns(2)
    for col, metric in zip(cols, ("deletion", "insertion")):
        fig = viz.curve_figure(results, metric)
        if fig is not None:
            col.plotly_chart(fig, config={"displayModeBar": False}, key=f"gb_q_curve_{metric}")
    fig = viz.sanity_figure(results)
    if fig is not None:
        st.plotly_chart(fig, config={"displayModeBar": False}, key="gb_q_sanity")
    for f in quality_findings(results):
        st.warning(escape_markdown(f.message))


def render_quality_line(row: dict[str, MetricResult], index: int) -> None:
    """Badges under one map: each metric's value for this input, green when better than its random
    attribution, red when not; the tooltip says what each one means."""
    if not row:
        return
    parts, tips = [], []
    for result in row.values():
        label, colour, tip = badge(result, index)
        parts.append(f":{colour}-badge[{escape_markdown(label)}]")
        tips.append(f"{label}: {tip}")
    st.markdown(" ".join(parts), help="\n\n".join(tips))


def render_quality_findings(model: LoadedModel) -> None:
    """The latest Quality tab's findings for this model (the Overview's explanations column)."""
    stored = st.session_state.get(FINDINGS_KEY)
    if not stored or stored[0] != model.sha256:
        return
    for f in stored[1]:
        st.markdown(f"{f.icon} **{f.kind}** — {escape_markdown(f.message)}")


def _read_masks(upload) -> np.ndarray | None:
    with state.error_boundary("Reading the masks"):
        return read_masks((upload.name, upload.getvalue()))
    return None

