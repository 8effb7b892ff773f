"""Figures of a causal LM's generation (`explain.generation.result`): results in, plotly out.

The page (`pages/views/generate.py`) and a report can call the same functions: the attribution
matrix (`generation_figure`), the selected step's attention per layer and head with its rollout
(`step_attention_figure`), the logit lens's rows at a position (`logit_lens_rows`) and a contrast at the
selected step (`contrast_html`, `contrast_caption`); a saved generation run's drawer and the report's
Generation section draw the run's kept views (`explain.generation.step_views`) with them too.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from explain.viz.attribution import (
    BAR_TICK_SIZE,
    FONT,
    colour_bar_text,
    colour_bar_ticks,
    plotly_colorscale,
    text_attribution_html,
)
from explain.viz.labels import elide, format_value, keep_labels_inside, label_margin, plot_text
from explain.viz.structure import ATTENTION_SCALE


def masked_values(values: np.ndarray, prompt_length: int, starts: np.ndarray | None = None) -> np.ndarray:
    """The attribution matrix [T, P + T] with NaN where generated token t cannot look
    (positions >= P + t: itself and everything after it), the upper triangle a heatmap leaves empty;
    with ``starts`` [G] the columns are groups of positions (words, sentences) starting there."""
    values = np.asarray(values, dtype=np.float64)
    t_count, length = values.shape
    first = np.arange(length) if starts is None else np.asarray(starts)  # [L or G]
    visible = first[None, :] < (prompt_length + np.arange(t_count))[:, None]  # [T, L or G]
    return np.where(visible, values, np.nan)


def generation_figure(values: np.ndarray, prompt_length: int, source_tokens: Sequence[str],
                      zmax: float | None = None, title: str = "", target: str = "the token",
                      groups: tuple[Sequence[str], np.ndarray] | None = None) -> go.Figure:
    """The attribution of each generated token (rows) to every earlier position (columns: the prompt,
    then the generated tokens) as a heatmap in the attribution colour scale (red supports the token,
    blue is against it), the positions a token cannot read left empty (`masked_values`).

    Args:
        values: [T, P + T] `explain.generation.result.GenerationAttribution.values`.
        prompt_length: P.
        source_tokens: P + T readable tokens (`explain.inputs.text.display_tokens` of ``input_ids``).
        zmax: the colour limit (default: the largest |value|).
        title: the figure's title. target: what red supports, in the colour bar's text.

    The axes are positions (each labelled with its token), so a repeated token keeps its own column.
    With ``groups`` (labels, start positions [G]: `explain.generation.granularity`) ``values`` is [T, G]
    and the columns are words or sentences.
    """
    starts = None if groups is None else np.asarray(groups[1])
    z = masked_values(values, prompt_length, starts)  # [T, L or G]
    t_count, length = z.shape
    first = np.arange(length) if starts is None else starts
    row_names = [str(t) for t in source_tokens][prompt_length:prompt_length + t_count]
    tokens = [str(t) for t in (source_tokens if groups is None else groups[0])][:length]
    tokens += [""] * (length - len(tokens))
    shown = [plot_text(elide(t)) for t in tokens]  # the axes are positions: equal tokens need not differ
    finite = np.abs(z[np.isfinite(z)])
    zmax = float(zmax or (finite.max() if finite.size else 0.0) or 1.0)
    ticks, labels = colour_bar_ticks(zmax, "all")
    hover = np.array([[f"{plot_text(row)} ← {plot_text(tokens[c])} "
                       f"({'prompt' if first[c] < prompt_length else 'generated'} {c})"
                       for c in range(length)] for row in row_names], dtype=object).reshape(t_count, length)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(length)), y=list(range(t_count)), zmin=-zmax, zmax=zmax, colorscale=plotly_colorscale("all"),
        customdata=hover, hoverongaps=False, colorbar=dict(
            tickvals=ticks, ticktext=labels, tickfont=dict(size=BAR_TICK_SIZE), thickness=10, outlinewidth=0,
            title=dict(text=plot_text(colour_bar_text("all", target)), side="right", font=dict(size=11))),
        hovertemplate="%{customdata}<br>attribution %{z:.4g}<extra></extra>",
    ))
    fig.add_vline(x=int((first < prompt_length).sum()) - 0.5, line=dict(color="#888", width=1, dash="dot"))  # prompt | generated
    fig.update_layout(
        title=dict(text=plot_text(title), x=0, xanchor="left", font=dict(size=14)) if title else None,
        height=max(260, 26 * t_count + 170), font=FONT, plot_bgcolor="white",
        margin=dict(l=label_margin([elide(t) for t in row_names] or ["x"]), r=10, t=40 if title else 10, b=90),
        xaxis=dict(tickmode="array", tickvals=list(range(length)), ticktext=shown, tickangle=-45,
                   title="source token (prompt, then generated)", showgrid=False, zeroline=False),
        yaxis=dict(tickmode="array", tickvals=list(range(t_count)), ticktext=[plot_text(elide(t)) for t in row_names],
                   autorange="reversed", title="generated token", showgrid=False, zeroline=False),
    )
    return keep_labels_inside(fig)


def logit_lens_rows(top_ids: np.ndarray, top_probs: np.ndarray, position: int, decode) -> list[dict]:
    """One row per layer of a lens (`explain.generation.result.LogitLens` of one prompt:
    ``top_ids`` / ``top_probs`` [layers + 1, L, k]) at ``position``: the top-1 token, its probability
    and the top-k as text. ``decode(ids) -> list[str]`` names tokens (`explain.inputs.text.display_tokens`)."""
    ids = np.asarray(top_ids)[:, position]  # [layers + 1, k]
    probs = np.asarray(top_probs)[:, position]
    last = ids.shape[0] - 1
    out = []
    for layer, (row_ids, row_probs) in enumerate(zip(ids, probs)):
        names = decode(row_ids)
        out.append({
            "layer": "embeddings" if layer == 0 else "output" if layer == last else f"layer {layer}",
            "top-1": names[0], "p": float(row_probs[0]),
            f"top-{len(names)}": " · ".join(f"{n} {format_value(float(p))}" for n, p in zip(names, row_probs)),
        })
    return out


def step_attention_figure(weights: np.ndarray, rollout: np.ndarray, position: int, source_tokens: Sequence[str],
                          title: str = "", row: int | None = None) -> go.Figure:
    """The selected step's attention: one row per (layer, head), then the rollout row, over the positions
    0 .. ``position`` it may read (columns labelled with their tokens), in the non-negative attention scale.

    Args:
        weights: [layers, heads, Q, L] one text's attention (`explain.generation.attention.text_attention`:
            Q = L, every query) or the query rows a run kept (`explain.generation.step_views.StepViews`).
        rollout: [Q, L] its rollout (`explain.generation.attention.causal_rollout`) or the kept rows.
        position: the query, P + t - 1 for generated token t (the position that predicts it).
        source_tokens: at least ``position + 1`` readable tokens of the text.
        row: the query's row in ``weights`` / ``rollout`` (default ``position``: every query's rows given).
    """
    weights = np.asarray(weights, dtype=np.float64)
    layers, heads = weights.shape[:2]
    keys, row = position + 1, position if row is None else row
    z = np.concatenate([weights[:, :, row, :keys].reshape(layers * heads, keys),
                        np.asarray(rollout, dtype=np.float64)[row, :keys][None]])  # [layers * heads + 1, keys]
    rows = [f"L{layer} H{head}" for layer in range(layers) for head in range(heads)] + ["rollout"]
    tokens = [str(t) for t in source_tokens][:keys]
    shown = [plot_text(elide(t)) for t in tokens]
    hover = np.array([[f"{row} · {plot_text(tokens[c])} ({c})" for c in range(keys)] for row in rows],
                     dtype=object)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(keys)), y=list(range(len(rows))), zmin=0, zmax=1, colorscale=ATTENTION_SCALE,
        customdata=hover, hovertemplate="%{customdata}<br>weight %{z:.3f}<extra></extra>",
        colorbar=dict(title=dict(text="weight", side="right", font=dict(size=11)), thickness=10,
                      tickfont=dict(size=BAR_TICK_SIZE), outlinewidth=0),
    ))
    fig.add_hline(y=len(rows) - 1.5, line=dict(color="#888", width=1, dash="dot"))  # heads | rollout
    fig.update_layout(
        title=dict(text=plot_text(title), x=0, xanchor="left", font=dict(size=14)) if title else None,
        height=max(240, 16 * len(rows) + 170), font=FONT, plot_bgcolor="white",
        margin=dict(l=label_margin(rows), r=10, t=40 if title else 10, b=90),
        xaxis=dict(tickmode="array", tickvals=list(range(keys)), ticktext=shown, tickangle=-45,
                   title="key position (what the step reads)", showgrid=False, zeroline=False),
        yaxis=dict(tickmode="array", tickvals=list(range(len(rows))), ticktext=rows, autorange="reversed",
                   title="layer · head", showgrid=False, zeroline=False),
    )
    return keep_labels_inside(fig)


def contrast_html(contrast, source_tokens: Sequence[str], joins: Sequence[bool], rather: str) -> str:
    """Why the step's token rather than ``rather``: the context it reads highlighted by the contrast's values
    (``contrast``: `explain.generation.contrastive.ContrastAttribution`, values [P + t]); ``source_tokens`` and
    ``joins`` at least P + t + 1 of the text's (`explain.inputs.text.token_display`)."""
    n = len(contrast.values)  # P + t: the token itself is at n
    return text_attribution_html(list(source_tokens[:n]), contrast.values, joins=list(joins[:n]),
                                 target=f"“{source_tokens[n]}” rather than “{rather}”")


def contrast_caption(contrast, source_tokens: Sequence[str], rather: str) -> str:
    """The contrast's difference of log-probabilities and completeness error, in one line."""
    err = "" if np.isnan(contrast.completeness_error) else f" · completeness error {contrast.completeness_error:.1e}"
    return f"log p(“{source_tokens[len(contrast.values)]}”) − log p(“{rather}”) = {contrast.difference:.4f}{err}"
