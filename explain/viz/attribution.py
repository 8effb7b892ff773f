"""Figures for `Attribution` results (pure functions: results in, plotly out).

`attribution_figure` is the one drawing of one input's attribution (an image map, a tabular
row's bars, highlighted tokens) for the Output page, the Overview and the report, with the one
colour-limit rule (`map_limits`) and the one number of features a bar chart lists (`TOP_K`).
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explain.attribution import Attribution
from explain.inputs.tabular import feature_names as tabular_feature_names
from explain.inputs.text import detokenize, padding_mask, token_display
from explain.spec import InputSpec
from explain.viz.labels import format_value, keep_labels_inside, plot_text, text_width

SIGNS = ("all", "positive", "negative", "absolute")
#: how an image map is shown: over a grey-scale copy of the input, alone, or next to the input.
VIEWS = ("overlay", "map alone", "side by side")
#: one colour limit for all inputs of a method, or one per map.
SCALES = ("shared", "per map")
#: the features a tabular attribution's bar chart lists, on every page and in the report.
TOP_K = 12
#: colours of the maps (RGB): red raises the target's logit, blue lowers it; |.| has its own hue.
RED, BLUE, PURPLE = (178, 24, 43), (33, 102, 172), (84, 39, 136)
#: the opacity of a colour at magnitude t in [0, 1] (t = |value| / limit): 0 at zero, rising fast
#: so that small but real evidence still shows (Captum and shap fade the map with magnitude too).
_ALPHA_STOPS = np.linspace(0.0, 1.0, 9)
_ALPHAS = 0.9 * _ALPHA_STOPS ** 0.75
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


def colour_limits(maps: np.ndarray, scale: str = "shared") -> np.ndarray:
    """The colour limit of each map [N]: one for all (``"shared"``, maps compare) or one per map."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    maps = np.asarray(maps)  # [N, H, W]
    if scale == "shared":
        return np.full(len(maps), shared_scale(maps))
    return np.array([shared_scale(m) for m in maps])


def map_limits(attribution: Attribution, rows: Sequence[int] | None = None, sign: str = "all",
               scale: str = "shared") -> np.ndarray:
    """The one colour-limit rule of image maps: [N] limits, `colour_limits` over the maps of the rows
    shown (``rows``, default all): one for them all (``"shared"``) or one per map; 1.0 elsewhere."""
    maps = image_maps(attribution, sign)  # [N, H, W]
    shown = list(range(len(maps))) if rows is None else list(rows)
    limits = np.ones(len(maps))
    if shown:
        limits[shown] = colour_limits(maps[shown], scale)
    return limits


def colour_stops(sign: str = "all", opaque: bool = False) -> list[tuple[float, tuple[int, int, int], float]]:
    """The one colour scale of attribution maps: (position in [0, 1], RGB, opacity) stops.

    ``"all"`` is diverging and centred on zero (position 0 = −limit, 0.5 = 0, 1 = +limit): blue,
    transparent, red; the other signs run from transparent at 0 to their colour at the limit.
    Opacity follows magnitude (``_ALPHAS``). ``opaque``: the same colours laid over white, for a
    map drawn alone.
    """
    if sign == "all":
        stops = [(0.5 - t / 2, BLUE, a) for t, a in zip(_ALPHA_STOPS[::-1], _ALPHAS[::-1])]
        stops += [(0.5 + t / 2, RED, a) for t, a in zip(_ALPHA_STOPS, _ALPHAS)]
    else:
        colour = {"positive": RED, "negative": BLUE, "absolute": PURPLE}[sign]
        stops = [(float(t), colour, float(a)) for t, a in zip(_ALPHA_STOPS, _ALPHAS)]
    if opaque:
        stops = [(t, tuple(int(round(255 + (c - 255) * a)) for c in rgb), 1.0) for t, rgb, a in stops]
    return [(float(t), tuple(int(c) for c in rgb), float(a)) for t, rgb, a in stops]


def plotly_colorscale(sign: str = "all", opaque: bool = False) -> list[list]:
    """`colour_stops` as a plotly colour scale (``rgba`` strings)."""
    return [[t, f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{a:.3f})"] for t, rgb, a in colour_stops(sign, opaque)]


def colour_range(zmax: float, sign: str = "all") -> tuple[float, float]:
    """(zmin, zmax) of a map's colour scale: symmetric about zero for ``"all"``, from 0 otherwise."""
    return (-zmax, zmax) if sign == "all" else (0.0, zmax)


def grey_image(image: np.ndarray) -> np.ndarray:
    """A faded grey-scale copy of uint8 [H, W, 3] pixels (R = G = B), the underlay of a map, so that
    the input's own colours never read as attribution. Luminance (ITU-R 601), lifted to [102, 255]."""
    rgb = np.asarray(image, dtype=np.float64)[..., :3]  # [H, W, 3]
    lum = rgb @ np.array([0.299, 0.587, 0.114])  # [H, W]
    grey = np.round(102 + lum * (153 / 255)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def map_colours(heat: np.ndarray, zmax: float, sign: str = "all", opaque: bool = False) -> np.ndarray:
    """RGBA floats [H, W, 4] (0..1) of a signed map under `colour_stops` (what plotly draws)."""
    lo, hi = colour_range(zmax, sign)
    pos = np.clip((np.asarray(heat, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)  # [H, W]
    stops = colour_stops(sign, opaque)
    xs = np.array([t for t, _, _ in stops])
    channels = [np.array([rgb[c] / 255 for _, rgb, _ in stops]) for c in range(3)] + [np.array([a for *_, a in stops])]
    return np.stack([np.interp(pos, xs, ch) for ch in channels], axis=-1)


def overlay_pixels(image: np.ndarray, heat: np.ndarray, zmax: float, sign: str = "all") -> np.ndarray:
    """A map over the grey-scale copy of its input as uint8 [H, W, 3] pixels (the report's picture;
    the page draws the same colours with plotly).

    Args:
        image: uint8 [H, W, 3].
        heat: [H, W] attribution (already signed with `signed_map`).
        zmax: the colour limit.
    """
    base = grey_image(image).astype(np.float64) / 255.0  # [H, W, 3]
    rgba = map_colours(heat, zmax, sign)  # [H, W, 4]
    alpha = rgba[..., 3:]
    return (np.clip(base * (1 - alpha) + rgba[..., :3] * alpha, 0, 1) * 255).round().astype(np.uint8)


def colour_bar_text(sign: str = "all", target: str = "") -> str:
    """What red and blue mean, for the colour bar under a map."""
    cls = target or "the target"
    return {
        "all": f"red: supports {cls} · blue: against",
        "positive": f"red: supports {cls}",
        "negative": f"blue: against {cls}",
        "absolute": f"|attribution|: for or against {cls}",
    }[sign]


#: the colour bar's tick labels (px).
BAR_TICK_SIZE = 10


def colour_bar_ticks(zmax: float, sign: str = "all") -> tuple[list[float], list[str]]:
    """(values, labels) of a map's colour bar: both ends and the middle, the ends always with their
    value (`format_value`: ``−0.12 · 0 · +0.12``, ``0 · 1.2e−6 · 2.5e−6``)."""
    lo, hi = colour_range(zmax, sign)
    half, end = format_value(zmax / 2), format_value(zmax)
    if sign == "all":
        labels = ["−" + end, "0", "+" + end]
    elif sign == "negative":
        labels = ["0", "−" + half, "−" + end]
    else:
        labels = ["0", half, end]
    return [lo, (lo + hi) / 2, hi], labels


def colour_bar_margin(zmax: float, sign: str = "all") -> int:
    """Pixels each side of a map needs so that the colour bar's end labels, centred on its ends,
    stay inside the figure (plotly hides a tick label that would cross the figure's edge)."""
    _, labels = colour_bar_ticks(zmax, sign)
    return (max(text_width(labels[0], BAR_TICK_SIZE), text_width(labels[-1], BAR_TICK_SIZE)) + 1) // 2 + 4


def _colour_bar(zmax: float, sign: str, target: str) -> dict:
    values, labels = colour_bar_ticks(zmax, sign)
    return dict(orientation="h", x=0.5, xanchor="center", y=-0.02, yanchor="top", thickness=8, len=1.0,
                tickvals=values, ticktext=labels, tickfont=dict(size=BAR_TICK_SIZE), outlinewidth=0,
                ticklabeloverflow="allow",
                title=dict(text=plot_text(colour_bar_text(sign, target)), side="bottom", font=dict(size=11)))


def image_attribution_figure(
    image: np.ndarray, heat: np.ndarray, zmax: float, sign: str = "all", title: str = "", height: int = 260,
    view: str = "overlay", target: str = "",
) -> go.Figure:
    """An attribution map as a reviewer reads it, with a colour bar saying what red and blue mean.

    Args:
        image: uint8 [H, W, 3] pixels of the input.
        heat: [H, W] attribution map (already signed with `signed_map`).
        zmax: colour limit (`colour_limits`); the scale is symmetric about zero for ``sign="all"``.
        view: ``"overlay"`` (the map over a grey-scale copy of the input, opacity following magnitude),
            ``"map alone"``, or ``"side by side"`` (the input, then the map alone).
        target: the class the map explains (named in the colour bar).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    lo, hi = colour_range(zmax, sign)
    side = colour_bar_margin(zmax, sign)  # the bar spans the plot; its end labels overhang into these margins
    heatmap = go.Heatmap(
        z=heat, zmin=lo, zmax=hi, colorscale=plotly_colorscale(sign, opaque=view != "overlay"), showscale=True,
        colorbar=_colour_bar(zmax, sign, target),
        hovertemplate="x=%{x} y=%{y}<br>attribution=%{z:.3g}<extra></extra>",
    )
    if view == "side by side":
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.04)
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=1)
        fig.add_trace(heatmap, row=1, col=2)
        fig.update_yaxes(scaleanchor="x2", row=1, col=2)
    else:
        fig = go.Figure()
        if view == "overlay":
            fig.add_trace(go.Image(z=grey_image(image), hoverinfo="skip"))
        fig.add_trace(heatmap)
        fig.update_yaxes(scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(
        title=dict(text=plot_text(title), font=dict(size=13)), height=height + 52, font=FONT, plot_bgcolor="white",
        margin=dict(l=side, r=side, t=28 if title else 0, b=52),
    )
    return fig


def tabular_bar_figure(
    values: np.ndarray, feature_names: Sequence[str], feature_values: np.ndarray | None = None,
    top_k: int = TOP_K, title: str = "",
) -> go.Figure:
    """Horizontal bars for one row: the ``top_k`` features by |attribution|."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-np.abs(values))[:top_k][::-1]
    labels = [
        plot_text(f"{feature_names[i]} = {feature_values[i]:.3g}" if feature_values is not None else feature_names[i])
        for i in order
    ]
    colors = [_hex(RED) if values[i] > 0 else _hex(BLUE) for i in order]  # the maps' red and blue
    fig = go.Figure(go.Bar(x=values[order], y=labels, orientation="h", marker_color=colors,
                           hovertemplate="%{y}<br>attribution=%{x:.4g}<extra></extra>"))
    fig.update_layout(
        title=dict(text=plot_text(title), font=dict(size=13)), height=max(220, 22 * len(order) + 60),
        margin=dict(l=0, r=10, t=30 if title else 6, b=0), font=FONT, xaxis_title="attribution",
        plot_bgcolor="white", xaxis=dict(zeroline=True, zerolinecolor="#888", gridcolor="#eee"),
    )
    return keep_labels_inside(fig)


def feature_values(spec: InputSpec, rows: np.ndarray) -> np.ndarray:
    """Tabular model inputs back in the features' own units (the spec's ``mean`` / ``std`` undone)."""
    x = np.asarray(rows, dtype=np.float64)
    if spec.mean is not None and spec.std is not None:
        return x * np.asarray(spec.std) + np.asarray(spec.mean)
    return x


def attribution_figure(
    attribution: Attribution, spec: InputSpec, row: int, *, limit: float | None = None, sign: str = "all",
    view: str = "overlay", title: str = "", target: str | None = None, legend: bool = True,
) -> go.Figure | str:
    """The one drawing of input ``row`` of an attribution, for the Output page, the Overview and the report.

    Image: the map over its input (`image_attribution_figure`) with colour limit ``limit`` (default:
    `map_limits` over all rows); tabular: the `TOP_K` features' bars, labelled with their values in the
    features' units; text: the highlighted tokens (HTML, `text_attribution_html`, padding left out and
    word pieces joined). ``target``: the class named in the legend (default: the row's target's name).
    """
    target = spec.class_name(int(attribution.target[row])) if target is None else target
    modality = spec.modality
    if modality == "image":
        image = to_display_images(attribution.inputs[row : row + 1], spec)[0]
        heat = image_maps(attribution, sign)[row]
        zmax = float(map_limits(attribution, sign=sign)[row]) if limit is None else float(limit)
        return image_attribution_figure(image, heat, zmax, sign, title=title, view=view, target=target)
    if modality == "tabular":
        raw = feature_values(spec, attribution.inputs[row])
        return tabular_bar_figure(attribution.values[row], tabular_feature_names(spec), raw, title=title)
    ids = np.asarray(attribution.inputs[row])
    return text_attribution_html(detokenize(ids, spec), attribution.values[row], padding=padding_mask(ids, spec),
                                 target=target, legend=legend, joins=[t.joins for t in token_display(ids, spec)])


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
            name=plot_text(feature_names[f]), showlegend=False,
            hovertemplate=f"{plot_text(feature_names[f])}<br>attribution=%{{x:.4g}}<extra></extra>",
        ))
    fig.update_yaxes(tickvals=list(range(len(rank))), ticktext=[plot_text(feature_names[f]) for f in rank])
    fig.update_layout(
        title=dict(text=plot_text(title), font=dict(size=13)), height=max(260, 24 * len(rank) + 80), font=FONT,
        xaxis_title="attribution (impact on the target logit)", margin=dict(l=0, r=10, t=30 if title else 6, b=0),
        plot_bgcolor="white", xaxis=dict(zeroline=True, zerolinecolor="#888", gridcolor="#eee"),
    )
    return keep_labels_inside(fig)


def relative_luminance(rgb: Sequence[float]) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0..255 channels)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (1 to 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


BLACK_TEXT, WHITE_TEXT = (0, 0, 0), (255, 255, 255)  # black or white: one of them always reaches 4.58:1


def token_colours(value: float, zmax: float) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(background, text) RGB of one token: the map's colour laid over white (`colour_stops`, opaque,
    so the page theme cannot change it) and the text colour (black or white) that contrasts more
    with it; either way at least 4.5:1 (WCAG AA)."""
    rgba = map_colours(np.array([[value]]), zmax or 1.0, "all", opaque=True)[0, 0]  # [4]
    background = tuple(int(round(c * 255)) for c in rgba[:3])
    text = max((BLACK_TEXT, WHITE_TEXT), key=lambda t: contrast_ratio(background, t))
    return background, text


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def legend_html(zmax: float, sign: str = "all", target: str = "") -> str:
    """A small colour bar in HTML (for token highlights and the report's image maps): the scale's
    colours from its low to its high end, the limits, and what red and blue mean."""
    lo, hi = colour_range(zmax, sign)
    stops = colour_stops(sign, opaque=True)
    gradient = ", ".join(f"{_hex(rgb)} {100 * t:.0f}%" for t, rgb, _ in stops)
    _, labels = colour_bar_ticks(zmax, sign)
    low, high = (labels[-1], labels[0]) if sign == "negative" else (labels[0], labels[-1])  # low end on the left
    if sign == "negative":
        gradient = ", ".join(f"{_hex(rgb)} {100 - 100 * t:.0f}%" for t, rgb, _ in stops[::-1])
    return (
        '<div class="gb-legend" style="display:flex;align-items:center;gap:6px;font-size:12px;color:#555;'
        'margin:4px 0">'
        f'<span>{html.escape(low)}</span>'
        f'<span style="display:inline-block;width:120px;height:10px;border:1px solid #ccc;'
        f'background:linear-gradient(to right, {gradient})"></span>'
        f'<span>{html.escape(high)}</span>'
        f'<span>{html.escape(colour_bar_text(sign, target))}</span></div>'
    )


def text_attribution_html(tokens: Sequence[str], values: np.ndarray, zmax: float | None = None,
                          padding: Sequence[bool] | np.ndarray | None = None, target: str = "",
                          legend: bool = True, joins: Sequence[bool] | None = None) -> str:
    """Tokens highlighted by attribution as escaped HTML (red supports the target, blue is against).

    Args:
        tokens: one token per position (`explain.inputs.text.detokenize`).
        values: one attribution per position.
        zmax: the colour scale's limit (default: the largest |value| shown).
        padding: True at padding positions (`explain.inputs.text.padding_mask` of the ids),
            which are left out; None: every position is shown.
        target: the class explained, named in the legend.
        legend: end with `legend_html` (a page of several rows shows it once).
        joins: one per token, True where it continues the previous word (a word piece:
            ``[t.joins for t in explain.inputs.text.token_display(ids, spec)]``); such a span has no
            gap before it, so the pieces of a word touch and read as one word, and a word never
            breaks over two lines. None: every token stands apart.

    Each token's text colour follows its background (`token_colours`); hovering a token shows its
    value. Token text is HTML-escaped: it comes from users.
    """
    values = np.asarray(values, dtype=np.float64)
    pad = np.zeros(len(tokens), dtype=bool) if padding is None else np.asarray(padding, dtype=bool).reshape(-1)
    keep = [i for i in range(len(tokens)) if not pad[i]]
    zmax = zmax or (float(np.max(np.abs(values[keep]))) if keep else 1.0) or 1.0
    joined = np.zeros(len(tokens), dtype=bool)
    if joins is not None:
        given = np.asarray(joins, dtype=bool).reshape(-1)[: len(tokens)]
        joined[: given.size] = given
    # a shown token joins the one shown before it (padding between them is not shown: no join across it)
    glued = [k > 0 and keep[k - 1] == i - 1 and bool(joined[i]) for k, i in enumerate(keep)]
    words: list[list[str]] = []
    for k, i in enumerate(keep):
        before, after = glued[k], k + 1 < len(keep) and glued[k + 1]
        background, text = token_colours(values[i], zmax)
        hover = html.escape(f"{tokens[i]}: {values[i]:+.4g}", quote=True)
        box = "padding:2px 4px;margin:1px;border-radius:4px"  # a token on its own
        if before or after:  # no padding, margin or rounding on the side where a piece of its word touches
            (pl, ml, rl), (pr, mr, rr) = (("0", "0", "0") if side else ("4px", "1px", "4px") for side in (before, after))
            box = f"padding:2px {pr} 2px {pl};margin:1px {mr} 1px {ml};border-radius:{rl} {rr} {rr} {rl}"
        span = (f'<span title="{hover}" style="background:{_hex(background)};color:{_hex(text)};'
                f'{box};display:inline-block">{html.escape(tokens[i])}</span>')
        if before:
            words[-1].append(span)
        else:
            words.append([span])
    spans = ["".join(w) if len(w) == 1 else '<span class="gb-word" style="white-space:nowrap">' + "".join(w) + "</span>"
             for w in words]
    out = '<div class="gb-tokens" style="line-height:2;font-size:15px">' + "".join(spans) + "</div>"
    return out + (legend_html(zmax, "all", target) if legend else "")


def probabilities_figure(probs: np.ndarray, class_names: Sequence[str], height: int = 160) -> go.Figure:
    """Small horizontal bar chart of class probabilities for one input."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(probs)[-5:]
    fig = go.Figure(go.Bar(x=probs[order], y=[plot_text(class_names[i] if i < len(class_names) else i) for i in order],
                           orientation="h", marker_color="#4a6fa5", text=[f"{p:.1%}" for p in probs[order]],
                           textposition="auto", hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=4, b=0), font=FONT, xaxis=dict(range=[0, 1], visible=False),
                      plot_bgcolor="white")
    return keep_labels_inside(fig)


def agreement_figure(names: Sequence[str], matrix: np.ndarray) -> go.Figure:
    """Heatmap of rank correlation between methods."""
    names = [plot_text(n) for n in names]
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu",
                               text=np.round(matrix, 2), texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=120 + 40 * len(names), margin=dict(l=0, r=0, t=10, b=0), font=FONT)
    return keep_labels_inside(fig)


def layer_attribution_figure(result, x: np.ndarray, spec: InputSpec, title: str) -> go.Figure | str:
    """One input's attribution to a layer's units (`explain.output.layer_attribution.LayerAttribution`
    of ``x`` [1, ...]): a spatial layer's map upsampled over the picture, a text layer's per-token
    highlights (HTML), else bars per unit — the Overview's layer map."""
    from explain.inputs.images import upsample

    if result.kind == "spatial":
        image = to_display_images(x, spec)[0]
        heat = upsample(result.display[0], image.shape[0], image.shape[1])
        return image_attribution_figure(image, heat, float(colour_limits(heat[None])[0]), title=title)
    if result.kind == "tokens":
        return text_attribution_html(detokenize(x[0], spec), result.display[0], padding=padding_mask(x[0], spec),
                                     joins=[t.joins for t in token_display(x[0], spec)])
    units = [f"unit {j}" for j in range(result.display.shape[1])]
    return tabular_bar_figure(result.display[0], units, title=title)
