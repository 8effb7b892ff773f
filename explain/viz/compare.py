"""Figures for a comparison of two versions (`explain.compare.comparison.Comparison`): the page,
the Saved runs page and the report's Compare section draw the same ones.

Pure functions: a `Comparison` in, a plotly figure (or, for text maps, HTML) out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from explain.spec import InputSpec
from explain.viz.attribution import attribution_figure, map_limits
from explain.viz.labels import keep_labels_inside
from explain.viz.training import FONT, figure_runs

if TYPE_CHECKING:
    from explain.compare.comparison import Comparison

FLIPPED_COLOR, KEPT_COLOR = "#d62728", "#1f77b4"
MIN_SHIFT_AXIS = 0.01  # the shift histogram's x axis spans at least one percentage point


def figure_probability_shifts(comparison: Comparison, height: int = 260) -> go.Figure:
    """Histogram of each input's largest probability change (``max_k |p_B - p_A|``), the inputs
    whose predicted class flipped stacked in red over the ones that kept it."""
    o = comparison.outputs
    shift = o.shift  # [N]
    flipped = np.zeros(len(shift), dtype=bool)
    flipped[o.flipped] = True
    # 20 bins over [0, the largest shift], at least [0, 0.01]: a version against itself (shifts of float
    # rounding, 1e-8) drew one bar over an axis of nano-probabilities
    top = max(float(np.abs(shift).max(initial=0.0)), MIN_SHIFT_AXIS)
    edges = dict(start=0.0, end=top * 1.0001, size=top / 20)
    fig = go.Figure()
    for mask, name, color in ((~flipped, "same class", KEPT_COLOR), (flipped, "flipped", FLIPPED_COLOR)):
        fig.add_trace(go.Histogram(x=shift[mask], name=f"{name} ({int(mask.sum())})", marker_color=color,
                                   xbins=edges, hovertemplate="Δp %{x}<br>%{y} inputs<extra></extra>"))
    fig.update_layout(barmode="stack", height=height, font=FONT, margin=dict(l=10, r=10, t=20, b=10),
                      plot_bgcolor="white", legend=dict(orientation="h", y=1.1))
    fig.update_xaxes(title_text="largest change of a class probability, |B − A|", range=[0.0, top * 1.0001])
    fig.update_yaxes(title_text="inputs", gridcolor="#eee")
    return keep_labels_inside(fig)


def figure_rank_correlation(comparison: Comparison, height: int = 260) -> go.Figure:
    """Per input, the Spearman ρ of A's and B's maps; flipped inputs in red; undefined ρ (a constant map) left out."""
    corr = comparison.attributions.rank_correlation  # [N]
    flipped = set(comparison.outputs.flipped)
    x = [f"#{i}" for i in range(len(corr))]
    colors = [FLIPPED_COLOR if i in flipped else KEPT_COLOR for i in range(len(corr))]
    fig = go.Figure(go.Bar(x=x, y=[float(c) if np.isfinite(c) else None for c in corr], marker_color=colors,
                           hovertemplate="input %{x}<br>ρ = %{y:.3f}<extra></extra>"))
    low = float(np.nanmin(corr)) if np.isfinite(corr).any() else 0.0
    fig.update_yaxes(title_text="Spearman ρ, A vs B", range=[min(0.0, low - 0.05), 1.02], gridcolor="#eee")
    fig.update_layout(height=height, font=FONT, margin=dict(l=10, r=10, t=20, b=10), plot_bgcolor="white")
    return keep_labels_inside(fig)


def figure_maps(comparison: Comparison, spec: InputSpec, row: int) -> tuple[go.Figure | str, go.Figure | str]:
    """Input ``row``'s maps of A and B side by side (the one attribution drawing,
    `explain.viz.attribution.attribution_figure`), images on one colour scale so they compare."""
    at = comparison.attributions
    limit = None
    if spec.modality == "image":
        limit = float(max(map_limits(at.a, [row])[row], map_limits(at.b, [row])[row]))
    rho = at.rank_correlation[row]
    rho_text = f"ρ = {rho:.3f}" if np.isfinite(rho) else "ρ undefined"
    return tuple(attribution_figure(attr, spec, row, limit=limit, title=f"{label} · input {row} · {rho_text}")
                 for attr, label in ((at.a, comparison.labels[0]), (at.b, comparison.labels[1])))


def figure_training(comparison: Comparison, height: int = 420) -> go.Figure | None:
    """Both versions' training curves overlaid (`explain.viz.training.figure_runs`); None without logs."""
    if not comparison.training:
        return None
    return figure_runs(comparison.training, smoothing=0.0, height=height,
                       names=[h.name for h in comparison.training])

