"""Figures for `Attribution` results (pure functions: results in, plotly out)."""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from explain.attribution import Attribution
from explain.spec import InputSpec

SIGNS = ("all", "positive", "negative", "absolute")
_DIVERGING = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]
_POSITIVE = [[0.0, "rgba(255,255,255,0)"], [1.0, "#b2182b"]]
_NEGATIVE = [[0.0, "rgba(255,255,255,0)"], [1.0, "#2166ac"]]
_ABSOLUTE = [[0.0, "rgba(255,255,255,0)"], [0.5, "#fdae61"], [1.0, "#7f0000"]]
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)


def to_display_images(inputs: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Model-ready [N, C, H, W] floats back to uint8 [N, H, W, 3] pixels."""
    x = np.asarray(inputs, dtype=np.float32)
    if spec.mean is not None and spec.std is not None:
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
        x = x * std + mean
    else:  # unknown normalisation: stretch each image to [0, 1]
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-8)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return (np.clip(x[:, :3], 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def signed_map(values: np.ndarray, sign: str) -> np.ndarray:
    """Pick the part of an attribution map to show: all, positive, negative or |.|."""
    if sign == "positive":
        return np.clip(values, 0, None)
    if sign == "negative":
        return np.clip(-values, 0, None)
    if sign == "absolute":
        return np.abs(values)
    return values


def image_maps(attribution: Attribution, sign: str = "all") -> np.ndarray:
    """Per-pixel maps [N, H, W]: channels summed, then the chosen sign."""
    values = np.asarray(attribution.values, dtype=np.float64)  # [N, C, H, W]
    return signed_map(values.sum(axis=1), sign)


def shared_scale(maps: np.ndarray) -> float:
    """One colour limit for a set of maps: the 99.5th percentile of |value|."""
    limit = float(np.percentile(np.abs(maps), 99.5)) if maps.size else 1.0
    return limit if limit > 0 else 1.0


def image_attribution_figure(
    image: np.ndarray, heat: np.ndarray, zmax: float, sign: str = "all", title: str = "", height: int = 260
) -> go.Figure:
    """A heatmap over its image.

    Args:
        image: uint8 [H, W, 3] pixels.
        heat: [H, W] attribution map (already signed with `signed_map`).
        zmax: colour limit shared by the maps being compared.
    """
    colorscale = {"positive": _POSITIVE, "negative": _NEGATIVE, "absolute": _ABSOLUTE}.get(sign, _DIVERGING)
    zmin = -zmax if sign == "all" else 0.0
    fig = go.Figure()
    fig.add_trace(go.Image(z=image, opacity=1.0, hoverinfo="skip"))
    fig.add_trace(
        go.Heatmap(
            z=heat, zmin=zmin, zmax=zmax, colorscale=colorscale, opacity=0.65, showscale=True,
            colorbar=dict(thickness=10, len=0.9, tickfont=dict(size=10)),
            hovertemplate="x=%{x} y=%{y}<br>attribution=%{z:.3g}<extra></extra>",
        )
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)), height=height, margin=dict(l=0, r=0, t=28 if title else 0, b=0),
        font=FONT, plot_bgcolor="white",
    )
    return fig


def tabular_bar_figure(
    values: np.ndarray, feature_names: Sequence[str], feature_values: np.ndarray | None = None,
    top_k: int = 12, title: str = "",
) -> go.Figure:
    """Horizontal bars for one row: the ``top_k`` features by |attribution|."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-np.abs(values))[:top_k][::-1]
    labels = [
        f"{feature_names[i]} = {feature_values[i]:.3g}" if feature_values is not None else str(feature_names[i])
        for i in order
    ]
    colors = ["#b2182b" if values[i] > 0 else "#2166ac" for i in order]
    fig = go.Figure(go.Bar(x=values[order], y=labels, orientation="h", marker_color=colors,
                           hovertemplate="%{y}<br>attribution=%{x:.4g}<extra></extra>"))
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)), height=max(220, 22 * len(order) + 60),
        margin=dict(l=0, r=10, t=30 if title else 6, b=0), font=FONT, xaxis_title="attribution",
        plot_bgcolor="white", xaxis=dict(zeroline=True, zerolinecolor="#888", gridcolor="#eee"),
    )
    return fig


def tabular_summary_figure(
    values: np.ndarray, inputs: np.ndarray, feature_names: Sequence[str], top_k: int = 15, title: str = ""
) -> go.Figure:
    """Beeswarm-style summary: one row per feature (ranked by mean |attribution|),
    one dot per input, coloured by the feature's value."""
    values = np.asarray(values, dtype=np.float64)  # [N, F]
    inputs = np.asarray(inputs, dtype=np.float64)
    rank = np.argsort(-np.abs(values).mean(axis=0))[:top_k][::-1]
    rng = np.random.default_rng(0)
    fig = go.Figure()
    for row, f in enumerate(rank):
        col = inputs[:, f]
        span = np.ptp(col) or 1.0
        fig.add_trace(go.Scatter(
            x=values[:, f], y=row + rng.uniform(-0.25, 0.25, len(col)), mode="markers",
            marker=dict(size=6, color=(col - col.min()) / span, colorscale="RdBu_r", cmin=0, cmax=1,
                        showscale=row == len(rank) - 1,
                        colorbar=dict(title="feature value", tickvals=[0, 1], ticktext=["low", "high"], thickness=10)),
            name=str(feature_names[f]), showlegend=False,
            hovertemplate=f"{feature_names[f]}<br>attribution=%{{x:.4g}}<extra></extra>",
        ))
    fig.update_yaxes(tickvals=list(range(len(rank))), ticktext=[str(feature_names[f]) for f in rank])
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)), height=max(260, 24 * len(rank) + 80), font=FONT,
        xaxis_title="attribution (impact on the target logit)", margin=dict(l=0, r=10, t=30 if title else 6, b=0),
        plot_bgcolor="white", xaxis=dict(zeroline=True, zerolinecolor="#888", gridcolor="#eee"),
    )
    return fig


def text_attribution_html(tokens: Sequence[str], values: np.ndarray, zmax: float | None = None,
                          padding: Sequence[bool] | np.ndarray | None = None) -> str:
    """Tokens highlighted by attribution as escaped HTML (red +, blue −).

    Args:
        tokens: one token per position (`explain.inputs.text.detokenize`).
        values: one attribution per position.
        zmax: the colour scale's limit (default: the largest |value| shown).
        padding: True at padding positions (`explain.inputs.text.padding_mask` of the ids),
            which are left out; None: every position is shown.

    Token text is HTML-escaped: it comes from users.
    """
    values = np.asarray(values, dtype=np.float64)
    pad = np.zeros(len(tokens), dtype=bool) if padding is None else np.asarray(padding, dtype=bool).reshape(-1)
    keep = [i for i in range(len(tokens)) if not pad[i]]
    zmax = zmax or (float(np.max(np.abs(values[keep]))) if keep else 1.0) or 1.0
    spans = []
    for i in keep:
        a = max(-1.0, min(1.0, values[i] / zmax))
        rgb = "178,24,43" if a > 0 else "33,102,172"
        spans.append(
            f'<span title="{values[i]:.4g}" style="background:rgba({rgb},{abs(a):.2f});'
            f'padding:2px 4px;margin:1px;border-radius:4px;display:inline-block">{html.escape(tokens[i])}</span>'
        )
    return '<div style="line-height:2;font-size:15px">' + "".join(spans) + "</div>"


def probabilities_figure(probs: np.ndarray, class_names: Sequence[str], height: int = 160) -> go.Figure:
    """Small horizontal bar chart of class probabilities for one input."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(probs)[-5:]
    fig = go.Figure(go.Bar(x=probs[order], y=[class_names[i] if i < len(class_names) else str(i) for i in order],
                           orientation="h", marker_color="#4a6fa5", text=[f"{p:.1%}" for p in probs[order]],
                           textposition="auto", hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=4, b=0), font=FONT, xaxis=dict(range=[0, 1], visible=False),
                      plot_bgcolor="white")
    return fig


def agreement_figure(names: Sequence[str], matrix: np.ndarray) -> go.Figure:
    """Heatmap of rank correlation between methods."""
    fig = go.Figure(go.Heatmap(z=matrix, x=list(names), y=list(names), zmin=-1, zmax=1, colorscale="RdBu",
                               text=np.round(matrix, 2), texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=120 + 40 * len(names), margin=dict(l=0, r=0, t=10, b=0), font=FONT)
    return fig
