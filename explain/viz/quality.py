"""Figures for quality metrics (pure functions: `MetricResult`s in, plotly out).

``results[method][metric]`` as `explain.output.metrics.quality.evaluate_quality` returns
it; the Output page's Quality tab and the report's Quality section draw the same figures.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explain.output.metrics.quality import Results
from explain.viz.attribution import FONT

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
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0), font=FONT,
                      title=dict(text=f"{metric.capitalize()}: mean over inputs", font=dict(size=14)),
                      xaxis_title=f"features {verb} (%, most important first)", yaxis_title=f"target {score}",
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0))
    return fig


def sanity_figure(results: Results, height: int = 320) -> go.Figure | None:
    """The randomisation check (Adebayo et al.): mean rank correlation with the original map as
    blocks are randomised from the top, per method, with the failure threshold; None without it."""
    rows = [(m, row["randomization"]) for m, row in results.items() if "randomization" in row]
    if not rows:
        return None
    fig = go.Figure()
    labels = max((r.curve_labels for _, r in rows), key=len)
    for k, (method, r) in enumerate(rows):
        fig.add_trace(go.Scatter(x=r.curve_labels, y=_mean_curve(r.curve), mode="lines+markers", name=method,
                                 line=dict(color=_PALETTE[k % len(_PALETTE)], width=2),
                                 hovertemplate=f"{method}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    threshold = float(rows[0][1].params.get("threshold", 0.5))
    fig.add_hline(y=threshold, line_dash="dash", line_color="#888",
                  annotation_text=f"fails at or above {threshold:g}", annotation_position="top right")
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0), font=FONT,
                      title=dict(text="Randomisation check: cumulative from the top", font=dict(size=14)),
                      xaxis=dict(title="randomised up to", categoryorder="array", categoryarray=labels),
                      yaxis=dict(title="rank correlation with the original", range=[-0.2, 1.05]),
                      legend=dict(orientation="h", yanchor="top", y=-0.3, x=0))
    return fig
