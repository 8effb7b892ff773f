"""Figures for quality metrics (pure functions: `MetricResult`s in, plotly out).

``results[method][metric]`` as `explain.output.metrics.quality.evaluate_quality` returns
it; the Output page's Quality tab and the report's Quality section draw the same figures.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explain.output.metrics.quality import Results
from explain.viz.attribution import FONT
from explain.viz.labels import TITLE_SIZE, keep_labels_inside, plot_text, text_width

#: the legend's entries (px) and the height each adds once there are more than two (they stack in a
#: narrow column: the Quality tab draws deletion and insertion side by side).
LEGEND_SIZE = 12
LEGEND_ROW = 20


def _legend_below(fig: go.Figure, height: int) -> None:
    """The legend under the x axis's title, never over it: placed in the figure's own coordinates
    (``yref="container"``) at its bottom, where plotly grows the bottom margin to hold it, instead of
    at a fraction of the plot's height below the axis, which the title's pixels did not follow. The
    figure grows with its entries, so the plot keeps its height in a narrow column; the right margin
    holds half the last x tick label ("100")."""
    entries = sum(1 for t in fig.data if t.showlegend is not False)
    fig.update_layout(
        height=height + LEGEND_ROW * max(0, entries - 2),
        legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, xanchor="left",
                    font=dict(size=LEGEND_SIZE)),
        margin=dict(l=0, r=text_width("100", FONT["size"]) // 2 + 8, t=30, b=0),
        title_font=dict(size=TITLE_SIZE),
    )
    keep_labels_inside(fig)

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _mean_curve(curve: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in curve.T])


def curve_figure(results: Results, metric: str, height: int = 320) -> go.Figure | None:
    """Mean deletion / insertion curve per method (solid) and of its random attribution (dotted);
    None when no method has that metric."""
    rows = [(m, row[metric]) for m, row in results.items() if metric in row and row[metric].curve is not None]
    if not rows:
        return None
    fig = go.Figure()
    for k, (method, r) in enumerate(rows):
        method = plot_text(method)
        colour = _PALETTE[k % len(_PALETTE)]
        x = np.asarray(r.curve_x) * 100
        fig.add_trace(go.Scatter(x=x, y=_mean_curve(r.curve), mode="lines", line=dict(color=colour, width=2),
                                 name=f"{method} (AUC {r.mean:.3f})",
                                 hovertemplate=f"{method}<br>%{{x:.0f}}%: %{{y:.3f}}<extra></extra>"))
        if r.random_curve is not None:
            fig.add_trace(go.Scatter(x=x, y=_mean_curve(r.random_curve), mode="lines",
                                     line=dict(color=colour, width=1, dash="dot"),
                                     name=f"{method}: random map (AUC {r.random_mean:.3f})",
                                     hovertemplate=f"random map of {method}<br>%{{x:.0f}}%: %{{y:.3f}}<extra></extra>"))
    verb = "removed" if metric == "deletion" else "added"
    score = rows[0][1].params.get("output", "probability")
    fig.update_layout(font=FONT, title=dict(text=f"{metric.capitalize()}: mean over inputs"),
                      xaxis_title=f"% {verb}, most important first", yaxis_title=f"target {score}")
    _legend_below(fig, height)
    return fig


def sanity_figure(results: Results, height: int = 320) -> go.Figure | None:
    """The randomisation check (Adebayo et al.): mean rank correlation with the original map as
    blocks are randomised from the top, per method, with the failure threshold; None without it."""
    rows = [(m, row["randomization"]) for m, row in results.items() if "randomization" in row]
    if not rows:
        return None
    fig = go.Figure()
    labels = [plot_text(label) for label in max((r.curve_labels for _, r in rows), key=len)]  # layer names
    for k, (method, r) in enumerate(rows):
        method = plot_text(method)
        fig.add_trace(go.Scatter(x=[plot_text(label) for label in r.curve_labels], y=_mean_curve(r.curve), mode="lines+markers", name=method,
                                 line=dict(color=_PALETTE[k % len(_PALETTE)], width=2),
                                 hovertemplate=f"{method}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    threshold = float(rows[0][1].params.get("threshold", 0.5))
    fig.add_hline(y=threshold, line_dash="dash", line_color="#888",
                  annotation_text=f"fails at or above {threshold:g}", annotation_position="top right")
    fig.update_layout(font=FONT, title=dict(text="Randomisation check: cumulative from the top"),
                      xaxis=dict(title="randomised up to", categoryorder="array", categoryarray=labels),
                      yaxis=dict(title="rank correlation with the original", range=[-0.2, 1.05]))
    _legend_below(fig, height)
    return fig
