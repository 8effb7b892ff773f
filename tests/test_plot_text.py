"""Tokens such as ``<s>`` and ``</s>`` reach plotly escaped: plotly reads axis labels and hover text as
HTML, so ``</s>`` closed a strike-through, vanished from its axis and threw the margins off (seen on
the Generate page's matrix for the keycopy sample, and on a RoBERTa's attention maps)."""
from __future__ import annotations

import numpy as np

from explain.viz.generation import generation_figure, step_attention_figure
from explain.viz.labels import plot_text
from explain.viz.structure import figure_attention, figure_attention_grid, figure_token_weights

TOKENS = ["<s>", "a", "&", "</s>", "a"]


def test_plot_text_escapes_what_plotly_reads_as_html():
    assert [plot_text(t) for t in TOKENS] == ["&lt;s&gt;", "a", "&amp;", "&lt;/s&gt;", "a"]


def test_token_axes_carry_no_raw_angle_brackets():
    eye = np.eye(5)
    shown = [
        list(figure_attention(eye, TOKENS).data[0].x),
        list(figure_attention_grid(eye[None, None], ["layer"], TOKENS).data[0].y),
        list(figure_token_weights(np.ones(5), TOKENS).data[0].x),
    ]
    for labels in shown:
        assert labels == ["&lt;s&gt;", "a", "&amp;", "&lt;/s&gt;", "a·2"]
    matrix = generation_figure(np.ones((2, 5)), 3, TOKENS)
    assert list(matrix.layout.xaxis.ticktext) == ["&lt;s&gt;", "a", "&amp;", "&lt;/s&gt;", "a"]
    assert list(matrix.layout.yaxis.ticktext) == ["&lt;/s&gt;", "a"]
    assert "<s>" not in str(matrix.data[0].customdata.tolist())
    step = step_attention_figure(np.full((1, 1, 5, 5), 0.2), np.full((5, 5), 0.2), 4, TOKENS)
    assert list(step.layout.xaxis.ticktext) == ["&lt;s&gt;", "a", "&amp;", "&lt;/s&gt;", "a"]
