"""Figures for training: curves with findings, runs, weight change, attribution drift.

Pure functions: a `TrainingHistory` / `Finding`s / `WeightChange` /
`AttributionDrift` in, a plotly figure out.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explain.finding import Finding
from explain.inputs.text import display_tokens, real_positions
from explain.spec import InputSpec
from explain.training.downsampling import downsample_points
from explain.training.history import TrainingHistory, smooth_ema
from explain.viz.attribution import grey_image, plotly_colorscale, to_display_images
from explain.viz.labels import elide_all, keep_labels_inside, label_margin, plot_text

if TYPE_CHECKING:  # types only: evolution imports torch, and the curves are drawn before torch is imported
    from explain.training.evolution import AttributionDrift, WeightChange

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
#: one colour per role, in every panel and in the legend (the validation metric is not the validation loss)
COLORS = {"train_loss": "#1f77b4", "val_loss": "#ff7f0e", "train_metric": "#2ca02c", "val_metric": "#9467bd",
          "lr": "#7f7f7f"}
#: the learning rate's ticks: 6.9e-4, 1.8e-5 (a rate spans decades; "0.000018" is unreadable)
LR_TICKFORMAT = ".2~e"
#: the drift heat map's feature / token axis: a readable size, and at most this many labelled columns
DRIFT_TICK_FONT = dict(size=FONT["size"])
MAX_DRIFT_TICKS = 40
SEVERITY_COLORS = {"info": "#2ca02c", "warning": "#d62728", "error": "#8b0000"}
KIND_LABELS = {
    "overfitting": "overfitting", "best_epoch": "best", "plateau": "plateau", "divergence": "diverges",
    "instability": "unstable", "underfitting": "underfits", "lr_effect": "LR",
}
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
X_TITLES = {"epoch": "epoch", "step": "step", "wall_time": "wall time (s)"}


def _finite_or_none(y: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in y]


def _add_series(fig: go.Figure, history: TrainingHistory, column: str, x: str, name: str, color: str,
                smoothing: float, row: int, secondary: bool = False, dash: str | None = None,
                visible: bool | str = True, shape: str = "linear") -> None:
    s = history.series(column, x)
    if s.empty:
        return
    xs, ys = downsample_points(s.index.to_numpy(dtype=float), s.to_numpy(dtype=float))  # a long log: bin means
    kw = dict(row=row, col=1, secondary_y=secondary) if secondary else dict(row=row, col=1)
    smoothed = smoothing > 0 and len(ys) > 2
    name, column, x = plot_text(name), plot_text(column), plot_text(x)  # a user's log names its series
    fig.add_trace(go.Scatter(
        x=xs, y=_finite_or_none(ys), mode="lines" if len(ys) > 1 else "markers", name=name,
        line=dict(color=color, width=1 if smoothed else 2, dash=dash, shape=shape), opacity=0.3 if smoothed else 1.0,
        legendgroup=name, showlegend=not smoothed, visible=visible,
        hovertemplate=f"{column}<br>{x}=%{{x}}<br>%{{y:.4g}}<extra></extra>",
    ), **kw)
    if smoothed:
        fig.add_trace(go.Scatter(
            x=xs, y=_finite_or_none(smooth_ema(ys, smoothing)), mode="lines", name=name,
            line=dict(color=color, width=2, dash=dash), legendgroup=name, visible=visible,
            hovertemplate=f"{column} (smoothed)<br>{x}=%{{x}}<br>%{{y:.4g}}<extra></extra>",
        ), **kw)


def _mark_findings(fig: go.Figure, history: TrainingHistory, findings: Sequence[Finding], x: str) -> None:
    """Vertical lines (a shaded band for plateaus) with a short label per finding."""
    level = 0
    for f in findings:
        unit = f.evidence.get("x", history.default_x)
        positions = history.x_positions(f.epochs, unit, x)
        if not positions:
            continue
        color = SEVERITY_COLORS.get(f.severity, "#555")
        label = plot_text(KIND_LABELS.get(f.kind, f.kind))
        if f.kind == "plateau" and len(positions) >= 2:
            fig.add_vrect(x0=positions[0], x1=positions[-1], fillcolor=color, opacity=0.08, line_width=0)
            marks = [positions[0]]
        else:
            marks = positions[:8]
        for pos in marks:
            fig.add_shape(type="line", x0=pos, x1=pos, y0=0, y1=1, xref="x", yref="paper",
                          line=dict(color=color, width=1.5, dash="dot"))
        fig.add_annotation(
            x=marks[0], y=1.0 - 0.07 * (level % 4), xref="x", yref="paper", text=f"<b>{label}</b>",
            showarrow=False, xanchor="left", yanchor="top", font=dict(color=color, size=11),
            bgcolor="rgba(255,255,255,0.8)", hovertext=plot_text(f.message),
        )
        level += 1


def default_smoothing(histories: Sequence[TrainingHistory]) -> float:
    """The curves' smoothing before anyone moves the slider: 0.6 from 30 points on, else none (it would lag
    behind a short run's curve)."""
    points = max((len(h.by_epoch()) for h in histories), default=0)
    return 0.6 if points >= 30 else 0.0


def figure_curves(
    history: TrainingHistory,
    findings: Sequence[Finding] = (),
    smoothing: float = 0.6,
    log_y: bool = False,
    x: str | None = None,
    height: int = 560,
) -> go.Figure:
    """Training and validation curves overlaid, metrics below, learning rate on a second axis.

    Args:
        history: the curves; its ``roles`` decide what goes where.
        findings: marked on the chart (line + label; plateaus shaded).
        smoothing: TensorBoard's debiased EMA weight (0 = raw only).
        log_y: log scale for the losses.
        x: ``epoch`` | ``step`` | ``wall_time`` (default: the history's).
    """
    x = x or history.default_x
    roles = history.roles
    has_metric = bool(roles.get("train_metric") or roles.get("val_metric"))
    rows = 2 if has_metric else 1
    fig = make_subplots(
        rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08,
        row_heights=[0.62, 0.38] if rows == 2 else [1.0],
        specs=[[{"secondary_y": True}]] + ([[{"secondary_y": False}]] if rows == 2 else []),
    )
    assigned = {c for c in roles.values() if c}
    for role, name in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        if roles.get(role):
            _add_series(fig, history, roles[role], x, f"{name} ({roles[role]})", COLORS[role], smoothing, 1)
    if roles.get("lr"):
        _add_series(fig, history, roles["lr"], x, f"learning rate ({roles['lr']})", COLORS["lr"], 0.0, 1,
                    secondary=True, dash="dash", shape="hv")  # a rate holds until the scheduler changes it
        lr = history.series(roles["lr"], x).to_numpy(dtype=float)
        lr = lr[np.isfinite(lr) & (lr > 0)]
        if len(lr) and lr.max() / lr.min() > 20:
            fig.update_yaxes(type="log", tickmode="linear", dtick="D2", row=1, col=1, secondary_y=True)  # 1, 2, 5 × 10ⁿ
        else:  # its own round ticks, not the loss grid's positions (an overlaying axis's default: 9.71e-3, 8.16e-3)
            fig.update_yaxes(tickmode="auto", row=1, col=1, secondary_y=True)
            if len(lr) and lr.max() / lr.min() < 1.001:  # a constant rate: keep it readable mid-axis
                fig.update_yaxes(range=[0, 2 * lr.max()], row=1, col=1, secondary_y=True)
        fig.update_yaxes(title_text="learning rate", row=1, col=1, secondary_y=True, showgrid=False,
                         tickformat=LR_TICKFORMAT, rangemode="tozero")
    if has_metric:
        for role, name in (("train_metric", "train"), ("val_metric", "validation")):
            if roles.get(role):
                _add_series(fig, history, roles[role], x, f"{name} metric ({roles[role]})", COLORS[role], smoothing, 2)
        fig.update_yaxes(title_text="metric", row=2, col=1)
    others = [c for c in RUN_COLORS if c not in COLORS.values()]  # a hidden series takes no role's colour
    for i, column in enumerate(c for c in history.series_columns if c not in assigned):
        _add_series(fig, history, column, x, column, others[i % len(others)], smoothing, 1, visible="legendonly")
    fig.update_yaxes(title_text="loss", type="log" if log_y else "linear", row=1, col=1, secondary_y=False)
    fig.update_xaxes(title_text=plot_text(X_TITLES.get(x, x)), row=rows, col=1)
    _mark_findings(fig, history, findings, x)
    fig.update_layout(
        height=height, font=FONT, margin=dict(l=10, r=10, t=30, b=10), hovermode="x unified",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), plot_bgcolor="white",
    )
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    return keep_labels_inside(fig)


def figure_runs(histories: Sequence[TrainingHistory], smoothing: float = 0.6, log_y: bool = False,
                x: str = "epoch", height: int = 520, names: Sequence[str] | None = None) -> go.Figure:
    """Several runs overlaid: one colour per run (its legend group, titled with the run's name: a click
    hides the whole run), train dashed and validation solid; losses above, metrics below when any run
    has one. ``names``: the legend groups' titles (default: each history's name; `run_names` makes
    them distinct)."""
    names = list(names) if names is not None else run_names(histories)
    has_metric = any(h.roles.get("train_metric") or h.roles.get("val_metric") for h in histories)
    rows = 2 if has_metric else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.62, 0.38] if rows == 2 else [1.0])
    for i, h in enumerate(histories):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        ax = x if x in h.frame.columns else h.default_x
        first = len(fig.data)
        for role, dash, label, row in (("train_loss", "dash", "train loss", 1), ("val_loss", None, "validation loss", 1),
                                       ("train_metric", "dash", "train metric", 2),
                                       ("val_metric", None, "validation metric", 2)):
            if h.roles.get(role) and row <= rows:
                _add_series(fig, h, h.roles[role], ax, f"{label} ({h.roles[role]})", color, smoothing, row, dash=dash)
        for trace in fig.data[first:]:
            trace.legendgroup = f"run {i}"
            trace.legendgrouptitle = dict(text=plot_text(names[i]))
    fig.update_yaxes(title_text="loss", type="log" if log_y else "linear", row=1, col=1)
    if has_metric:
        fig.update_yaxes(title_text="metric", row=2, col=1)
    fig.update_xaxes(title_text=plot_text(X_TITLES.get(x, x)), row=rows, col=1)
    fig.update_layout(height=height, font=FONT, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      legend=dict(groupclick="togglegroup"))
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    return keep_labels_inside(fig)


def figure_overview(histories: Sequence[TrainingHistory], findings: Sequence[Sequence[Finding]],
                    names: Sequence[str] | None = None, epoch: float | None = None, height: int = 420) -> go.Figure:
    """The Overview's curves: one run with its ``findings[0]`` marked, or the runs overlaid; the legend
    below, and a dotted line at ``epoch`` (the checkpoint the map explains). Torch-free: the app's
    first paint (`ui.first_paint`) draws it before torch is imported, the Overview through
    `explain.report.overview.training_figure`."""
    fig = (figure_curves(histories[0], findings[0], height=height) if len(histories) == 1
           else figure_runs(histories, height=height, names=names))
    fig.update_layout(legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.18, x=0),
                      margin=dict(l=0, r=0, t=10, b=0))
    if epoch is not None:
        fig.add_vline(x=epoch, line_dash="dot", line_color="#444")
    return fig


def run_names(histories: Sequence[TrainingHistory]) -> list[str]:
    """One distinct display name per run: its name, numbered when two runs share one (two
    ``train_log.csv`` from different folders)."""
    names: list[str] = []
    for h in histories:
        name, n = h.name, 2
        while name in names:
            name, n = f"{h.name} #{n}", n + 1
        names.append(name)
    return names


def figure_weight_changes(change: WeightChange, height: int | None = None) -> go.Figure:
    """Layers x intervals heatmap of the relative weight change ||ΔW|| / ||W||."""
    z = change.values  # [layer, interval]
    text = [[f"{v:.1%}" if np.isfinite(v) else "" for v in row] for row in z]
    layers = elide_all(change.layers)  # layer names and checkpoint file names: plotly text (`plot_text`)
    fig = go.Figure(go.Heatmap(
        z=z, x=[plot_text(i) for i in change.intervals], y=[plot_text(name) for name in layers], colorscale="Blues",
        zmin=0, text=text, texttemplate="%{text}" if len(change.layers) <= 30 else None,
        customdata=np.tile(np.array([plot_text(name) for name in change.layers], dtype=object)[:, None], (1, z.shape[1])),
        colorbar=dict(title="‖ΔW‖/‖W‖", thickness=12, tickformat=".0%"),
        hovertemplate="%{customdata}<br>%{x}<br>relative change %{z:.2%}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title_text="layer", automargin=True, type="category")
    # interval labels ("epoch 1 → epoch 4") stay horizontal while they fit, else turn 45°: room for either
    fig.update_xaxes(title_text="between checkpoints", side="bottom", automargin=True, type="category")
    bottom = 40 + int(label_margin(change.intervals, FONT["size"], pad=0) * 0.71)
    fig.update_layout(height=height or max(260, 22 * len(change.layers) + 90 + bottom), font=FONT,
                      margin=dict(l=label_margin(layers, FONT["size"]) + 24, r=10, t=20, b=bottom))
    return keep_labels_inside(fig)


def _zmax(maps: np.ndarray) -> float:
    limit = float(np.percentile(np.abs(maps), 99.5)) if maps.size else 1.0
    return limit if limit > 0 else 1.0


def _title(drift: AttributionDrift, k: int, index: int) -> str:
    rho = drift.correlation[k, index]
    label = plot_text(drift.labels[k])  # a checkpoint's file name
    return f"{label}<br>ρ = {rho:.2f}" if np.isfinite(rho) else label


def figure_attribution_drift(drift: AttributionDrift, index: int, spec: InputSpec,
                             inputs: np.ndarray | None = None, height: int = 280) -> go.Figure:
    """One input explained by each checkpoint, side by side, with ρ to the final checkpoint.

    Images: one heatmap per checkpoint over the (dimmed) image. Tabular and
    text: one row per checkpoint, one column per feature / token.
    """
    maps = drift.maps[:, index]  # [K, ...]
    k = maps.shape[0]
    zmax = _zmax(maps)
    if maps.ndim == 3:  # images [K, H, W]
        fig = make_subplots(rows=1, cols=k, subplot_titles=[_title(drift, j, index) for j in range(k)],
                            horizontal_spacing=0.02)
        image = None
        if inputs is not None:  # the maps go over a grey-scale copy, as on the Output page
            image = grey_image(to_display_images(np.asarray(inputs)[index : index + 1], spec)[0])
        for j in range(k):
            if image is not None:
                fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=j + 1)
            fig.add_trace(go.Heatmap(
                z=maps[j], zmin=-zmax, zmax=zmax, colorscale=plotly_colorscale("all", opaque=image is None),
                showscale=j == k - 1, colorbar=dict(thickness=10),
                hovertemplate="x=%{x} y=%{y}<br>attribution=%{z:.3g}<extra></extra>",
            ), row=1, col=j + 1)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, autorange="reversed")
        for j in range(k):
            fig.update_yaxes(scaleanchor=f"x{'' if j == 0 else j + 1}", row=1, col=j + 1)
        fig.update_layout(height=height, font=FONT, margin=dict(l=0, r=0, t=50, b=0))
        for ann in fig.layout.annotations:
            ann.font = dict(size=12)
        return keep_labels_inside(fig)
    columns = _column_labels(spec, maps.shape[-1], inputs, index)
    if spec.modality == "text" and inputs is not None:  # padding is left out, as in ρ
        keep = real_positions(np.asarray(inputs)[index], spec)
        maps, columns = maps[..., keep], [columns[i] for i in keep]
    rows = [plot_text(f"{drift.labels[j]} (ρ={drift.correlation[j, index]:.2f})") for j in range(k)]
    columns = [plot_text(c) for c in columns]  # feature names, tokens
    fig = go.Figure(go.Heatmap(
        z=maps.reshape(k, -1), x=list(range(len(columns))), y=rows, zmin=-zmax, zmax=zmax,
        colorscale=plotly_colorscale("all", opaque=True),
        customdata=np.tile(np.array(columns, dtype=object), (k, 1)),
        hovertemplate="%{y}<br>%{customdata}<br>attribution=%{z:.3g}<extra></extra>",
        colorbar=dict(thickness=10),
    ))
    every = -(-len(columns) // MAX_DRIFT_TICKS)  # a long text or a wide table: every n-th column labelled
    shown = list(range(0, len(columns), every))
    fig.update_xaxes(tickmode="array", tickvals=shown, ticktext=[columns[i] for i in shown], tickangle=-60,
                     tickfont=DRIFT_TICK_FONT)
    fig.update_yaxes(autorange="reversed", tickfont=DRIFT_TICK_FONT)
    fig.update_layout(height=max(height, 40 * k + 160), font=FONT, margin=dict(l=10, r=10, t=20, b=10))
    return keep_labels_inside(fig)


def _column_labels(spec: InputSpec, width: int, inputs: np.ndarray | None, index: int) -> list[str]:
    if spec.modality == "tabular" and spec.feature_names and len(spec.feature_names) == width:
        return list(spec.feature_names)
    if spec.modality == "text" and (spec.vocabulary or spec.tokenizer) and inputs is not None:
        ids = np.asarray(inputs)[index].reshape(-1)  # readable tokens ("great", not the vocabulary's "Ġgreat")
        return [f"{i}:{t}" for i, t in enumerate(display_tokens(ids, spec))]
    return [str(i) for i in range(width)]


def figure_drift_correlation(drift: AttributionDrift, height: int = 260) -> go.Figure:
    """Mean Spearman ρ (± std over inputs) of each checkpoint's attributions with the final one's."""
    mean = drift.mean_correlation
    std = np.nanstd(drift.correlation, axis=1)
    fig = go.Figure(go.Scatter(
        x=[plot_text(label) for label in drift.labels], y=mean, mode="lines+markers", error_y=dict(type="data", array=std, visible=True),
        hovertemplate="%{x}<br>ρ = %{y:.3f}<extra></extra>", line=dict(color=COLORS["train_loss"]),
    ))
    fig.update_yaxes(title_text="Spearman ρ to final", range=[min(-0.05, float(np.nanmin(mean)) - 0.1), 1.05])
    fig.update_layout(height=height, font=FONT, margin=dict(l=10, r=10, t=20, b=10), plot_bgcolor="white")
    return keep_labels_inside(fig)
