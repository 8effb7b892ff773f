"""Figures of a dataset-wide run (`explain.dataset.summary.DatasetSummary`): results in, plotly out."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explain.dataset.summary import DatasetSummary
from explain.viz.attribution import FONT, plotly_colorscale, shared_scale, tabular_summary_figure
from explain.viz.labels import keep_labels_inside, plot_text

#: rows a beeswarm draws at most (an even subsample of the finished rows beyond that).
BEESWARM_MAX_ROWS = 2000


def mean_abs_figure(summary: DatasetSummary, feature_names: Sequence[str], top_k: int = 20) -> go.Figure:
    """Horizontal bars: the ``top_k`` features by mean |attribution| over the rows explained so far."""
    values = np.asarray(summary.mean_abs, dtype=np.float64).reshape(-1)  # [F]
    order = np.argsort(-values)[:top_k][::-1]
    fig = go.Figure(go.Bar(x=values[order], y=[plot_text(feature_names[i]) for i in order], orientation="h",
                           marker_color="#4a6fa5", hovertemplate="%{y}<br>mean |attribution|=%{x:.4g}<extra></extra>"))
    fig.update_layout(height=max(220, 22 * len(order) + 60), margin=dict(l=0, r=10, t=6, b=0), font=FONT,
                      xaxis_title=f"mean |attribution| over {summary.rows} rows", plot_bgcolor="white",
                      xaxis=dict(gridcolor="#eee"))
    return keep_labels_inside(fig)


def beeswarm_figure(values: np.ndarray, inputs: np.ndarray, feature_names: Sequence[str], top_k: int = 15) -> go.Figure:
    """The beeswarm of `tabular_summary_figure` over at most `BEESWARM_MAX_ROWS` rows (an even subsample)."""
    values = np.asarray(values)  # [N, F]
    if len(values) > BEESWARM_MAX_ROWS:
        keep = np.linspace(0, len(values) - 1, BEESWARM_MAX_ROWS).round().astype(int)
        values, inputs = values[keep], np.asarray(inputs)[keep]
    return tabular_summary_figure(values, inputs, feature_names, top_k=top_k)


def class_mean_maps_figure(summary: DatasetSummary, class_names: Sequence[str]) -> go.Figure:
    """One heatmap per class with rows explained for it: the mean attribution map (channels summed),
    one colour scale for all so classes compare."""
    classes = [k for k, count in enumerate(summary.class_counts) if count > 0]
    maps = np.asarray(summary.class_means, dtype=np.float64)  # [K, H, W]
    zmax = shared_scale(maps[classes]) if classes else 1.0
    names = [plot_text(class_names[k] if k < len(class_names) else k) for k in range(len(maps))]
    fig = make_subplots(rows=1, cols=max(1, len(classes)), horizontal_spacing=0.03,
                        subplot_titles=[f"{names[k]} ({int(summary.class_counts[k])})" for k in classes] or [""])
    for col, k in enumerate(classes, start=1):
        fig.add_trace(go.Heatmap(z=maps[k], zmin=-zmax, zmax=zmax, colorscale=plotly_colorscale("all", opaque=True), showscale=col == len(classes),
                                 hovertemplate=f"{names[k]}<br>y=%{{y}} x=%{{x}}<br>mean attribution=%{{z:.4g}}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}", visible=False, row=1, col=col)
        fig.update_xaxes(visible=False, row=1, col=col)
    fig.update_layout(height=260, margin=dict(l=0, r=0, t=30, b=0), font=FONT, plot_bgcolor="white")
    return keep_labels_inside(fig)


def top_tokens_figure(summary: DatasetSummary, class_names: Sequence[str]) -> go.Figure:
    """One bar chart per class: the tokens with the largest summed attribution toward it."""
    classes = [k for k, row in enumerate(summary.top_tokens) if row]
    names = [plot_text(class_names[k] if k < len(class_names) else k) for k in range(len(summary.top_tokens))]
    fig = make_subplots(rows=1, cols=max(1, len(classes)), horizontal_spacing=0.12,
                        subplot_titles=[names[k] for k in classes] or [""])
    for col, k in enumerate(classes, start=1):
        row = summary.top_tokens[k][::-1]
        fig.add_trace(go.Bar(x=[t.total for t in row], y=[plot_text(t.token) for t in row], orientation="h",
                             marker_color=["#b2182b" if t.total > 0 else "#2166ac" for t in row],
                             customdata=[t.count for t in row], showlegend=False,
                             hovertemplate="%{y}<br>summed attribution=%{x:.4g}<br>%{customdata} occurrences<extra></extra>"),
                      row=1, col=col)
    fig.update_layout(height=max(240, 24 * max([len(summary.top_tokens[k]) for k in classes] + [1]) + 70),
                      margin=dict(l=0, r=10, t=30, b=0), font=FONT, plot_bgcolor="white")
    return keep_labels_inside(fig)
