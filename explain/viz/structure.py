"""Figures for the structure view: attention grids, FLOPs, activations, weights, layer importance.

Pure functions: arrays and result objects in, plotly figures out. Long
sequences are pooled by the caller (`explain.structure.attention_summary.pool_attention`)
before they get here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explain.viz.attribution import image_attribution_figure
from explain.viz.labels import (
    NARROW_WIDTH,
    TITLE_SIZE,
    elide_all,
    format_value,
    keep_labels_inside,
    label_margin,
    plot_text,
    title_margin,
    wrap_title,
)

ATTENTION_SCALE = "Blues"
#: at most this many tokens get their label written on an axis of a small multiple (then every n-th).
_MAX_LABELLED = 24


def figure_attention(matrix: np.ndarray, tokens: Sequence[str] | None = None, title: str = "",
                     height: int = 520, width: int = NARROW_WIDTH) -> go.Figure:
    """One attention map [query, key] as a heatmap, tokens on both axes (query rows, key columns).

    ``title`` wraps (`wrap_title`) to fit ``width`` pixels, the narrowest pane the map is drawn in (the
    Overview's middle column), and the top margin grows with its lines.
    """
    q, k = matrix.shape
    xs = list(tokens)[:k] if tokens and len(tokens) >= k else list(range(k))
    ys = list(tokens)[:q] if tokens and len(tokens) >= q else list(range(q))
    fig = go.Figure(go.Heatmap(
        z=matrix, x=_unique(xs), y=_unique(ys), colorscale=ATTENTION_SCALE, zmin=0, zmax=float(max(matrix.max(), 1e-6)),
        hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>", colorbar=dict(title="weight"),
    ))
    text = wrap_title(title, width)  # "encoder.layers.1.self_attn<br>mean over heads" in a narrow pane
    fig.update_layout(title=dict(text=text, font=dict(size=TITLE_SIZE), x=0, xref="container", xanchor="left", pad=dict(l=8)),
                      height=height, margin=dict(l=10, r=10, t=title_margin(text) + 8, b=10),
                      xaxis=dict(title="key", tickangle=-45, type="category"),
                      yaxis=dict(title="query", autorange="reversed", type="category"))
    return keep_labels_inside(fig)


#: the name `explain.report.analysis` calls.
attention_figure = figure_attention


def figure_attention_grid(weights: np.ndarray, layer_names: Sequence[str], tokens: Sequence[str] | None = None,
                          selected: tuple[int, int] | None = None, cell: int = 190) -> go.Figure:
    """Layer × head grid of attention heatmaps for one input.

    Args:
        weights: [layer, head, query, key] (one input, already pooled if long).
        layer_names: one per layer (row titles).
        tokens: axis labels (written only when there are few).
        selected: (layer, head) to outline.
        cell: pixel size of one small heatmap.
    """
    n_layers, n_heads, q, k = weights.shape
    titles = [plot_text(f"{_short(layer_names[li])} · head {h}") for li in range(n_layers) for h in range(n_heads)]
    fig = make_subplots(rows=n_layers, cols=n_heads, subplot_titles=titles,
                        horizontal_spacing=0.03, vertical_spacing=0.08 / max(1, n_layers / 2))
    labelled = tokens is not None
    xs = _unique(list(tokens)[:k]) if labelled else list(range(k))
    ys = _unique(list(tokens)[:q]) if labelled else list(range(q))
    # every token labelled up to _MAX_LABELLED, else every step-th one (the hover names them all)
    x_ticks = xs[:: -(-len(xs) // _MAX_LABELLED)] if labelled else None
    y_ticks = ys[:: -(-len(ys) // _MAX_LABELLED)] if labelled else None
    zmax = float(max(weights.max(), 1e-6))
    for li in range(n_layers):
        for h in range(n_heads):
            fig.add_trace(go.Heatmap(
                z=weights[li, h], x=xs, y=ys, coloraxis="coloraxis",
                hovertemplate=f"layer {li} head {h}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}<extra></extra>",
            ), row=li + 1, col=h + 1)
            fig.update_yaxes(autorange="reversed", showticklabels=labelled and h == 0, type="category" if labelled else None,
                             tickmode="array" if labelled else None, tickvals=y_ticks, row=li + 1, col=h + 1)
            fig.update_xaxes(showticklabels=labelled and li == n_layers - 1, tickangle=-60,
                             type="category" if labelled else None, tickmode="array" if labelled else None,
                             tickvals=x_ticks, row=li + 1, col=h + 1)
    if selected is not None:
        li, h = selected
        axis = li * n_heads + h + 1
        suffix = "" if axis == 1 else str(axis)
        fig.add_shape(type="rect", xref=f"x{suffix} domain", yref=f"y{suffix} domain", x0=0, y0=0, x1=1, y1=1,
                      line=dict(color="#d62728", width=3))
    fig.update_layout(coloraxis=dict(colorscale=ATTENTION_SCALE, cmin=0, cmax=zmax, colorbar=dict(title="weight")),
                      height=max(260, cell * n_layers + 80), margin=dict(l=10, r=10, t=40, b=10),
                      font=dict(size=10))
    fig.update_annotations(font_size=11)
    return keep_labels_inside(fig)


def figure_token_weights(values: np.ndarray, tokens: Sequence[str], title: str = "",
                         highlight: Sequence[bool] | None = None) -> go.Figure:
    """Bar chart of one weight per token (e.g. what ``<cls>`` attends to, or a rollout row)."""
    colours = ["#d62728" if highlight is not None and highlight[i] else "#1f77b4" for i in range(len(values))]
    fig = go.Figure(go.Bar(x=_unique(list(tokens)), y=values, marker_color=colours,
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=plot_text(title), height=300, margin=dict(l=10, r=10, t=50, b=10), yaxis_title="weight",
                      xaxis=dict(tickangle=-45, type="category"))
    return keep_labels_inside(fig)


#: the FLOPs chart's top margin (its title and a gap above the bars) and tick labels (px).
FLOPS_TOP = title_margin("Share of FLOPs") + 8
FLOPS_TICK_SIZE = 12


def figure_flops(rows: Sequence[dict], top: int = 25) -> go.Figure:
    """Horizontal bars: FLOP share of the most expensive layers (``rows`` from the layer table)."""
    known = [r for r in rows if r.get("flops") is not None and r.get("name")]
    known = sorted(known, key=lambda r: -r["flops"])[:top][::-1]
    labels = elide_all([r["name"] for r in known])
    fig = go.Figure(go.Bar(
        x=[100 * (r.get("flop_share") or 0) for r in known], y=[plot_text(label) for label in labels], orientation="h",
        customdata=[[r["flops"], plot_text(r["type"]), plot_text(r["name"])] for r in known], marker_color="#ff7f0e",
        hovertemplate="%{customdata[2]} (%{customdata[1]})<br>%{customdata[0]:,} FLOPs<br>%{x:.1f}%<extra></extra>",
    ))
    fig.update_yaxes(automargin=True, type="category")
    # the title sits in its own top margin, the axis title below its tick labels: neither over the ticks
    bottom = int(FLOPS_TICK_SIZE * 1.3 + TITLE_SIZE * 1.3) + 20
    fig.update_xaxes(title=dict(text="% of model FLOPs", standoff=8), tickfont=dict(size=FLOPS_TICK_SIZE),
                     automargin=True)
    fig.update_layout(title=dict(text="Share of FLOPs", font=dict(size=TITLE_SIZE), x=0, xref="container", xanchor="left", pad=dict(l=8)),
                      height=max(240, 22 * len(known) + 60 + FLOPS_TOP + bottom),
                      margin=dict(l=label_margin(labels), r=16, t=FLOPS_TOP, b=bottom))
    return keep_labels_inside(fig)


def figure_activation_stats(rows: Sequence[dict]) -> go.Figure:
    """Per layer: mean ± std of the output, share of zeros and of dead units."""
    names = [plot_text(r["name"]) for r in rows]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("mean ± std of the output", "zeros and dead units (%)"))
    fig.add_trace(go.Bar(x=[r["mean"] for r in rows], y=names, orientation="h", name="mean",
                         error_x=dict(type="data", array=[r["std"] for r in rows], thickness=1),
                         marker_color="#1f77b4"), row=1, col=1)
    fig.add_trace(go.Bar(x=[100 * (r["zero_fraction"] or 0) for r in rows], y=names, orientation="h",
                         name="zeros", marker_color="#9467bd"), row=1, col=2)
    fig.add_trace(go.Bar(x=[100 * (r["dead_fraction"] or 0) for r in rows], y=names, orientation="h",
                         name="dead units", marker_color="#d62728"), row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(barmode="group", height=max(260, 26 * len(rows) + 100), margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", y=-0.08))
    return keep_labels_inside(fig)


def figure_weight_norms(stats: Sequence) -> go.Figure:
    """RMS (norm / √n) and max |w| of every parameter tensor."""
    names = [plot_text(s.name) for s in stats]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[s.rms for s in stats], y=names, orientation="h", name="RMS",
                         customdata=[[s.norm, s.numel] for s in stats], marker_color="#2ca02c",
                         hovertemplate="%{y}<br>RMS %{x:.4f}<br>L2 norm %{customdata[0]:.3f}<br>%{customdata[1]:,} values<extra></extra>"))
    fig.add_trace(go.Scatter(x=[s.abs_max for s in stats], y=names, mode="markers", name="max |w|",
                             marker=dict(color="#d62728", symbol="diamond")))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Weight magnitude per tensor", height=max(260, 20 * len(stats) + 100),
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.08))
    return keep_labels_inside(fig)


def figure_weight_histogram(counts: np.ndarray, edges: np.ndarray, name: str) -> go.Figure:
    """Histogram of one parameter tensor's values."""
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker_color="#2ca02c",
                           hovertemplate="%{x:.4f}: %{y}<extra></extra>"))
    fig.update_layout(title=f"Values of {plot_text(name)}", xaxis_title="weight", yaxis_title="count", bargap=0,
                      height=320, margin=dict(l=10, r=10, t=50, b=10))
    return keep_labels_inside(fig)


def figure_layer_importance(result) -> go.Figure:
    """Ranked horizontal bars of `LayerImportance.magnitude` (signed total in the hover)."""
    layers = [plot_text(layer) for layer in result.layers][::-1]
    fig = go.Figure(go.Bar(
        x=list(result.magnitude)[::-1], y=layers, orientation="h", marker_color="#8c564b",
        customdata=list(result.total)[::-1],
        hovertemplate="%{y}<br>Σ|attribution| %{x:.4f}<br>Σ attribution %{customdata:.4f}<extra></extra>",
    ))
    fig.update_layout(title=f"Layer importance for the predicted class (LayerIntegratedGradients, {result.steps} steps)",
                      xaxis_title="mean Σ|attribution| over inputs", height=max(240, 26 * len(layers) + 100),
                      margin=dict(l=10, r=10, t=50, b=10))
    return keep_labels_inside(fig)


def figure_grad_cam(image: np.ndarray, cam: np.ndarray, title: str = "", target: str = "") -> go.Figure:
    """Grad-CAM heat map [H, W] in [0, 1] over an RGB uint8 image [H, W, 3], drawn as every other
    attribution map is (`explain.viz.attribution.image_attribution_figure`): the non-negative scale
    of `colour_stops` (transparent at zero to red at 1) over the input's grey-scale copy, with its
    colour bar; ``target`` names the class the map explains."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0.0, None)
    return image_attribution_figure(image, cam, zmax=1.0, sign="positive", title=title, height=220, target=target)


#: the colour scale of a heat map over a picture (perceptually even, dark to bright).
IMAGE_HEAT_SCALE = "Viridis"


def figure_image_heatmap(image: np.ndarray, heat: np.ndarray, title: str = "", label: str = "value",
                         opacity: float = 0.5) -> go.Figure:
    """A heat map [H, W] over its picture (uint8 [H, W, 3]), e.g. the attention rollout of a Vision
    Transformer upsampled to the image (`explain.structure.attention.image_rollout`).

    The heat keeps its own units: the colour runs from 0 (or the map's minimum, when negative) to its
    maximum, and the colour bar, titled ``label``, names both ends (`format_value`); the hover names
    the pixel and its value. ``title`` wraps to the narrowest pane (`wrap_title`) with a top margin for
    its lines, and the margins hold the colour bar (`keep_labels_inside`).

    Raises:
        ValueError: ``heat`` is not [H, W] of the picture.
    """
    image = np.asarray(image)
    if image.ndim == 2:  # a grey picture: three equal channels
        image = np.repeat(image[..., None], 3, axis=-1)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"A heat map of shape {heat.shape} does not fit a picture of {image.shape[:2]}.")
    finite = heat[np.isfinite(heat)]
    zmax = float(finite.max()) if finite.size else 1.0
    zmin = min(0.0, float(finite.min())) if finite.size else 0.0
    if zmax <= zmin:
        zmax = zmin + 1e-12
    ticks = [zmin, (zmin + zmax) / 2, zmax]
    fig = go.Figure(go.Image(z=image, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(
        z=heat, colorscale=IMAGE_HEAT_SCALE, opacity=opacity, zmin=zmin, zmax=zmax,
        hovertemplate=f"x %{{x}} y %{{y}}<br>{plot_text(label)} %{{z:.3g}}<extra></extra>",
        colorbar=dict(title=dict(text=plot_text(label), side="right"), thickness=12, len=0.9, tickmode="array",
                      tickvals=ticks, ticktext=[format_value(t) for t in ticks]),
    ))
    text = wrap_title(title, NARROW_WIDTH)
    fig.update_layout(title=dict(text=text, font=dict(size=TITLE_SIZE), x=0, xref="container", xanchor="left", pad=dict(l=8)),
                      height=320 + title_margin(text), margin=dict(l=5, r=5, t=title_margin(text) + 8, b=5))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    return keep_labels_inside(fig)


def _short(name: str, keep: int = 3) -> str:
    parts = name.split(".")
    return ".".join(parts[-keep:]) if len(parts) > keep else name


def _unique(labels: list) -> list:
    """Category axes merge equal labels: make repeated ones distinct (and plotly-safe: `plot_text`)."""
    seen: dict = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(plot_text(lab) if seen[lab] == 1 else f"{plot_text(lab)}·{seen[lab]}")
    return out
