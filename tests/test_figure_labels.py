"""Report and page figures keep all their labels: long layer names elided in the middle, margins
computed from the labels (they grow with them), attention maps with their tokens."""
from __future__ import annotations

import re

import numpy as np
import pytest

from explain.training.evolution import WeightChange
from explain.viz.labels import CHAR_WIDTH, elide, elide_all, label_margin, plot_text
from explain.viz.structure import figure_attention_grid, figure_flops
from explain.viz.training import figure_weight_changes

LONG = "bert.encoder.layer.11.attention.output.dense"  # 44 characters


def test_elide_keeps_both_ends_and_the_length():
    assert elide("conv1") == "conv1"
    short = elide(LONG, 20)
    assert len(short) == 20 and short == "bert.encod…put.dense" and "…" in short
    # names that share their ends stay distinct on a category axis
    a, b = LONG.replace("11", "10"), LONG
    assert len(set(elide_all([a, b], 20))) == 2


def test_label_margin_grows_with_the_longest_label():
    assert label_margin(["a" * 10], 12, pad=0) == round(10 * 12 * CHAR_WIDTH)
    assert label_margin(["a" * 40], 12) > label_margin(["a" * 20], 12) > label_margin(["a"], 12)
    assert label_margin([], 12, pad=5) == 5


def _flop_rows(names):
    return [{"name": n, "type": "Linear", "flops": 100 * (i + 1), "flop_share": (i + 1) / 10} for i, n in enumerate(names)]


@pytest.mark.parametrize("name", ["fc", "encoder.layers.0.self_attn", LONG, LONG * 2])
def test_flops_bars_leave_room_for_their_longest_label(name):
    fig = figure_flops(_flop_rows(["head", name]))
    labels = list(fig.data[0].y)
    longest = max(len(s) for s in labels)
    assert longest <= 40  # elided
    assert fig.layout.margin.l >= longest * 12 * CHAR_WIDTH  # the default 12 px font fits
    assert fig.layout.yaxis.automargin is True
    assert name in [c[2] for c in fig.data[0].customdata]  # the full name in the hover


def test_flops_margin_grows_with_label_length():
    margins = [figure_flops(_flop_rows([n])).layout.margin.l for n in ("fc", "layer3.conv1", LONG)]
    assert margins == sorted(margins) and margins[0] < margins[-1]


def test_weight_change_heatmap_margins_fit_long_layer_names_and_intervals():
    def change(names):
        return WeightChange(names, ["epoch 1", "epoch 4", "epoch 10"], ["epoch 1 → epoch 4", "epoch 4 → epoch 10"],
                            np.full((len(names), 2), 0.1), np.ones((len(names), 3)))

    short, long = figure_weight_changes(change(["a", "b"])), figure_weight_changes(change([LONG, "head"]))
    assert long.layout.margin.l > short.layout.margin.l
    assert long.layout.margin.l >= max(len(s) for s in long.data[0].y) * 13 * CHAR_WIDTH  # FONT is 13 px
    assert long.layout.margin.b >= 40  # the axis title and the interval labels
    assert long.data[0].customdata[0][0] == LONG


@pytest.mark.parametrize("n", [6, 60])
def test_attention_grid_labels_its_tokens_short_or_long(n):
    tokens = [f"t{i}" for i in range(n)]
    fig = figure_attention_grid(np.full((2, 2, n, n), 1.0 / n), ["layers.0.self_attn", "layers.1.self_attn"], tokens)
    x_bottom = fig.layout.xaxis3  # the last row shows the key labels
    assert x_bottom.showticklabels and list(x_bottom.tickvals)[0] == "t0"
    assert len(x_bottom.tickvals) <= 24 and (n > 24 or len(x_bottom.tickvals) == n)
    assert fig.layout.yaxis.showticklabels and list(fig.layout.yaxis.tickvals)[0] == "t0"


def test_report_attention_heatmaps_carry_token_labels():
    from explain.report.sections import build_report
    from sample_models import load_sample, sample_inputs

    model = load_sample("sentiment")
    report = build_report(model, sample_inputs("sentiment")["inputs"][:1], methods=["saliency"])
    attention = report.section("Attention")
    fig = attention.figures[0]
    tokens = attention.data["tokens"]
    assert tokens[0] == "<cls>"
    ticks = [t for ax in fig.layout if ax.startswith("xaxis") and fig.layout[ax].showticklabels
             for t in fig.layout[ax].tickvals]
    shown = {plot_text(t) for t in tokens}  # escaped: plotly reads "<cls>" as an HTML tag
    assert shown <= set(ticks) | {f"{t}·2" for t in shown}


def test_wrap_title_fits_lines_to_a_width():
    from explain.viz.labels import wrap_title

    assert wrap_title("Share of FLOPs") == "Share of FLOPs"  # fits: one line
    per_line = int(300 // (14 * CHAR_WIDTH))
    lines = wrap_title("encoder.layers.1.self_attn · mean over heads", 300, 14).split("<br>")
    assert lines == ["encoder.layers.1.self_attn", "mean over heads"]  # the parts of a "·" title, a line each
    lines = wrap_title(f"{LONG}.extra.long.name.of.a.module · mean over heads", 300, 14).split("<br>")
    assert all(len(line) <= per_line for line in lines) and lines[-1] == "mean over heads"
    assert lines[0].startswith("bert.") and "…" in lines[0]  # a name longer than a line keeps both ends
    many = wrap_title(" · ".join(["word"] * 10), 100, 14, max_lines=3).split("<br>")
    assert len(many) == 3


@pytest.mark.parametrize("name", ["encoder.layers.1.self_attn", LONG, "roberta.encoder.layer.23.attention.self"])
def test_overview_attention_title_fits_its_pane(name):
    """Issue 20 item 7: the Overview's attention map title was cut ("… · mean ove") in its ~300 px pane.
    It wraps to the narrow pane's width, whole words kept, with a top margin for all its lines."""
    from explain.report.analysis import attention_figures
    from explain.viz.labels import LINE_HEIGHT, NARROW_WIDTH, TITLE_SIZE

    tokens = ["<cls>", "good", "film"]
    fig = attention_figures(np.full((1, 2, 3, 3), 1 / 3), [name], tokens, [0, 1, 2], grid=False)[0]
    fig.update_layout(height=380)  # what the Overview does to it
    title = fig.layout.title
    lines = title.text.split("<br>")
    assert lines[-1] == "mean over heads" and len(lines) == 2
    assert all(len(line) * TITLE_SIZE * CHAR_WIDTH <= NARROW_WIDTH for line in lines)
    assert title.font.size == TITLE_SIZE
    assert fig.layout.margin.t >= len(lines) * TITLE_SIZE * LINE_HEIGHT + 8
    assert title.yref == "container" and title.y is None  # centred in the top margin, not pushed above it
    assert fig.layout.xaxis.automargin and fig.layout.yaxis.automargin


def _quality_results(methods):
    from explain.output.metrics.base import MetricResult

    x = np.linspace(0, 1, 11)
    out = {}
    for k, m in enumerate(methods):
        c = np.exp(-x * (3 + k))[None].repeat(2, 0)
        out[m] = {
            "deletion": MetricResult("deletion", m, np.array([0.3, 0.4]), np.array([0.6, 0.6]), False, x, c, c ** 0.3),
            "randomization": MetricResult("randomization", m, np.array([0.3]), None, False, np.arange(3.0),
                                          np.array([[1.0, 0.6, 0.2]]), None, ["original", "head", "layer3"]),
        }
    return out


@pytest.mark.parametrize("methods", [["saliency"], ["integrated_gradients", "saliency", "gradient_shap"]])
def test_quality_legend_sits_below_the_x_title(methods):
    """Issue 20 item 7: the Quality tab's legend was placed at a fraction of the plot's height under the
    axis (y=-0.25), which the x title's pixels did not follow: in a narrow column they overlapped. The
    legend now sits at the figure's bottom in its own coordinates, where plotly makes room for it under
    the axis title, and the figure grows with its entries so the plot keeps its height."""
    from explain.viz.quality import LEGEND_ROW, curve_figure, sanity_figure

    results = _quality_results(methods)
    deletion, sanity = curve_figure(results, "deletion"), sanity_figure(results)
    for fig in (deletion, sanity):
        legend = fig.layout.legend
        assert (legend.yref, legend.y, legend.yanchor, legend.orientation) == ("container", 0, "bottom", "h")
        assert fig.layout.xaxis.automargin is True and fig.layout.yaxis.automargin is True
        assert fig.layout.margin.r >= len("100") * 13 * CHAR_WIDTH / 2  # the last x tick ("100") is not hidden
    entries = 2 * len(methods)  # each method and its random map
    assert deletion.layout.height == 320 + LEGEND_ROW * max(0, entries - 2)
    # the x title fits a ~300 px plot of the Quality tab's half-width column
    assert len(deletion.layout.xaxis.title.text) * 13 * CHAR_WIDTH <= 260
    assert deletion.layout.xaxis.title.text == "% removed, most important first"


def test_figures_set_automargin_themselves_not_through_the_template(monkeypatch):
    """The app's "streamlit" template (the default in the app's process, where report jobs run too) sets
    no automargin: figures that counted on plotly's template had clipped tick labels there."""
    import plotly.io as pio

    from explain.dataset.summary import DatasetSummary
    from explain.viz import attribution, dataset, structure
    from explain.viz.quality import curve_figure

    monkeypatch.setattr(pio.templates, "default", "none")
    summary = DatasetSummary("tabular", 4, 4, 1, 1, np.array([0.1, 0.2, 0.3]), np.array([2, 2]), np.zeros((2, 3)))
    figures = [
        structure.figure_flops(_flop_rows(["head", LONG])),
        structure.figure_attention(np.eye(3), ["a", "b", "c"], title="layer · mean over heads"),
        structure.figure_attention_grid(np.full((1, 1, 3, 3), 1 / 3), ["l0"], ["a", "b", "c"]),
        structure.figure_token_weights(np.ones(3), ["a", "b", "c"]),
        structure.figure_image_heatmap(np.zeros((4, 4, 3), dtype=np.uint8), np.ones((4, 4)), "title"),
        attribution.tabular_bar_figure(np.array([0.5, -0.2]), ["f0", "f1"]),
        attribution.agreement_figure(["a", "b"], np.eye(2)),
        dataset.mean_abs_figure(summary, ["a", "b", "c"]),
        curve_figure(_quality_results(["saliency"]), "deletion"),
    ]
    for fig in figures:
        axes = [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
        assert axes and all(fig.layout[k].automargin is True for k in axes), fig.layout.title.text


def test_names_alike_but_for_the_layer_number_keep_the_number_when_elided():
    """Thirty Hugging Face layers elided in the middle all read "bert.encoder.layer…ntion.output.dense";
    numbering them ·2 … ·30 named the wrong layer. They keep the part where they differ."""
    names = [f"bert.encoder.layer.{i}.attention.output.dense" for i in range(30)]
    short = elide_all(names)
    assert len(set(short)) == 30 and all(len(s) <= 40 for s in short)
    assert all(re.search(rf"layer\.{i}[.…]", s) for i, s in enumerate(short))
    assert not any("·" in s for s in short)
    fig = figure_flops(_flop_rows(names))  # each bar's label names its own layer (the hover has the full name)
    assert all(re.search(rf"layer\.{c[2].split('.')[3]}[.…]", y) for y, c in zip(fig.data[0].y, fig.data[0].customdata))


def test_image_heatmap_keeps_the_heat_in_its_units_under_a_labelled_colour_bar():
    """`figure_image_heatmap`: the picture, then the heat over it in its own units (0 to its peak), a colour
    bar titled with the label and its ends written by `format_value`, the title wrapped to the narrow pane."""
    from explain.viz.labels import LINE_HEIGHT, NARROW_WIDTH, TITLE_SIZE
    from explain.viz.structure import figure_image_heatmap

    image = np.zeros((16, 16, 3), dtype=np.uint8)
    heat = np.kron(np.array([[0.05, 0.25], [0.125, 0.375]]), np.ones((8, 8)))  # a 2 x 2 patch map, upsampled
    title = "What [CLS] draws on after all layers, by patch (2×2)"
    fig = figure_image_heatmap(image, heat, title, label="rollout share", opacity=0.6)
    picture, overlay = fig.data
    assert picture.type == "image" and np.asarray(picture.z).shape == (16, 16, 3)
    assert overlay.type == "heatmap" and overlay.opacity == 0.6
    np.testing.assert_array_equal(np.asarray(overlay.z), heat)  # not rescaled: hover and bar read the shares
    assert (overlay.zmin, overlay.zmax) == (0.0, 0.375)
    assert overlay.colorbar.title.text == "rollout share" and "rollout share %{z:.3g}" in overlay.hovertemplate
    assert list(overlay.colorbar.ticktext) == ["0", "0.19", "0.38"]
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) == 2 and " ".join(lines) == title
    assert all(len(line) * TITLE_SIZE * CHAR_WIDTH <= NARROW_WIDTH for line in lines)
    assert fig.layout.margin.t >= len(lines) * TITLE_SIZE * LINE_HEIGHT + 8
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.autorange == "reversed"  # pixels square, row 0 on top
    assert fig.layout.xaxis.automargin and fig.layout.yaxis.automargin
    grey = figure_image_heatmap(np.zeros((16, 16), dtype=np.uint8), -heat)  # a grey picture; heat below zero
    assert np.asarray(grey.data[0].z).shape == (16, 16, 3) and (grey.data[1].zmin, grey.data[1].zmax) == (-0.375, -0.05)
    assert grey.data[1].colorbar.title.text == "value"
    with pytest.raises(ValueError, match="does not fit"):
        figure_image_heatmap(image, heat[:8])


def test_report_resizes_every_plot_on_load_and_before_printing():
    """Figures side by side in a section were drawn at the row's full width, all but the last clipped:
    the report resizes every plot once laid out and before printing, after plotly and the figures."""
    from explain.report.document import Report, Section
    from explain.viz.structure import figure_token_weights

    figures = [figure_token_weights(np.ones(3), ["a", "b", "c"], title=t) for t in ("one", "two")]
    page = Report("r", sections=[Section("Side by side", figures=figures)]).to_html()
    script = ("<script>for (const e of ['load','beforeprint']) window.addEventListener(e, () => "
              "document.querySelectorAll('.js-plotly-plot').forEach(p => Plotly.Plots.resize(p)));</script>")
    assert page.count(script) == 1
    assert page.rfind('class="fig"') < page.index(script) < page.index("</body>")
