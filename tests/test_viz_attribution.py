"""Attribution figures a reviewer reads at a glance: known answers for the overlay, its colour
scale and bar, the views, and the token highlights' contrast."""
from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import pytest

from explain.viz import attribution as viz


def _image() -> np.ndarray:
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[..., 2] = 220  # a blue background ...
    img[4:12, 4:12] = (230, 20, 20)  # ... with a red square: neither colour may read as attribution
    return img


def _heat() -> np.ndarray:
    heat = np.zeros((16, 16))
    heat[4:8, 4:12] = 2.0
    heat[8:12, 4:12] = -1.0
    return heat


def test_grey_underlay_has_equal_channels_and_keeps_luminance_order():
    grey = viz.grey_image(_image())
    assert grey.shape == (16, 16, 3) and grey.dtype == np.uint8
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # pure blue (luminance 0.114 * 220 = 25) is darker than pure red (0.299 * 230 + 0.587 * 20 = 80)
    assert grey[0, 0, 0] == round(102 + 0.114 * 220 * 153 / 255) and grey[0, 0, 0] < grey[6, 6, 0]
    white = viz.grey_image(np.full((1, 1, 3), 255, np.uint8))
    assert white[0, 0].tolist() == [255, 255, 255]


def test_overlay_draws_the_map_over_the_grey_copy_not_the_colour_image():
    img, heat = _image(), _heat()
    fig = viz.image_attribution_figure(img, heat, 2.0, target="triangle")
    image, heatmap = fig.data
    assert isinstance(image, go.Image) and isinstance(heatmap, go.Heatmap)
    z = np.asarray(image.z)
    assert (z[..., 0] == z[..., 1]).all() and (z[..., 1] == z[..., 2]).all()
    assert (z == viz.grey_image(img)).all()
    assert heatmap.zmin == -heatmap.zmax == -2.0  # symmetric about zero
    assert "supports triangle" in heatmap.colorbar.title.text and "against" in heatmap.colorbar.title.text
    assert list(heatmap.colorbar.tickvals) == [-2.0, 0.0, 2.0]


def test_opacity_follows_magnitude_and_the_scale_is_centred_on_zero():
    stops = viz.colour_stops("all")
    positions = [t for t, _, _ in stops]
    assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] == 1.0
    alphas = dict()
    for t, rgb, a in stops:
        alphas.setdefault(round(abs(t - 0.5), 6), set()).add(round(a, 9))
        assert rgb == (viz.RED if t > 0.5 else viz.BLUE if t < 0.5 else rgb)
    assert all(len(a) == 1 for a in alphas.values())  # -v and +v are equally opaque
    ordered = [next(iter(alphas[k])) for k in sorted(alphas)]
    assert ordered[0] == 0.0 and all(b > a for a, b in zip(ordered, ordered[1:]))  # 0 transparent, rising
    rgba = viz.map_colours(np.array([[0.0, 1.0, -1.0, 2.0, -2.0]]), 2.0)[0]
    assert rgba[0, 3] == 0.0 and rgba[1, 3] == pytest.approx(rgba[2, 3]) and rgba[3, 3] == pytest.approx(0.9)
    assert rgba[3, :3] == pytest.approx(np.array(viz.RED) / 255) and rgba[4, :3] == pytest.approx(np.array(viz.BLUE) / 255)


def test_overlay_pixels_are_grey_where_the_map_is_zero_and_coloured_where_it_is_large():
    img, heat = _image(), _heat()
    out = viz.overlay_pixels(img, heat, 2.0)
    grey = viz.grey_image(img)
    assert (out[0, 0] == grey[0, 0]).all()  # zero attribution: the grey input, not its blue
    red = out[5, 5].astype(int)
    assert red[0] > red[1] + 60 and red[0] > red[2] + 60  # strongly positive: red
    blue = out[10, 5].astype(int)
    assert blue[2] > blue[0] + 20  # negative: blue (half the limit, so fainter)


def test_absolute_mode_stays_visible():
    """A map at a quarter of its limit still changes the grey pixel clearly (the old scale faded it)."""
    img = np.full((1, 1, 3), 128, np.uint8)
    grey = viz.grey_image(img).astype(float)
    out = viz.overlay_pixels(img, np.array([[0.25]]), 1.0, "absolute").astype(float)
    assert np.abs(out - grey).max() >= 40
    fig = viz.image_attribution_figure(np.repeat(img, 4, 0).repeat(4, 1), np.full((4, 4), 0.5), 1.0, "absolute")
    assert fig.data[1].zmin == 0.0 and fig.data[1].zmax == 1.0
    assert "either" in fig.data[1].colorbar.title.text or "for or against" in fig.data[1].colorbar.title.text


@pytest.mark.parametrize("view, expected", [
    ("overlay", ["image", "heatmap"]),
    ("map alone", ["heatmap"]),
    ("side by side", ["image", "heatmap"]),
])
def test_views_draw_the_expected_traces(view, expected):
    img, heat = _image(), _heat()
    fig = viz.image_attribution_figure(img, heat, 2.0, view=view)
    assert [t.type for t in fig.data] == expected
    heatmap = fig.data[-1]
    alphas = [float(re.findall(r"[\d.]+", c)[-1]) for _, c in heatmap.colorscale]
    if view == "overlay":
        assert min(alphas) == 0.0  # transparent at zero over the grey copy
    else:
        assert min(alphas) == 1.0  # opaque over white when drawn alone
    if view == "side by side":
        assert (np.asarray(fig.data[0].z) == img).all()  # the input in its own colours next to the map
        assert fig.data[0].xaxis == "x" and heatmap.xaxis == "x2"


def test_unknown_view_or_scale_is_refused():
    with pytest.raises(ValueError):
        viz.image_attribution_figure(_image(), _heat(), 1.0, view="blend")
    with pytest.raises(ValueError):
        viz.colour_limits(np.ones((2, 2, 2)), "global")


def test_shared_scale_is_one_limit_per_map_scale_follows_each_map():
    maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 10.0)])
    assert viz.colour_limits(maps, "shared").tolist() == [10.0, 10.0]
    assert viz.colour_limits(maps, "per map").tolist() == [1.0, 10.0]


def test_token_text_contrasts_at_least_4_5_to_1_over_the_whole_colour_range():
    worst = min(
        viz.contrast_ratio(*viz.token_colours(v, 1.0)) for v in np.linspace(-1.2, 1.2, 241)
    )
    assert worst >= 4.5
    # the known WCAG values: black on white 21:1, white on white 1:1
    assert viz.contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert viz.contrast_ratio(viz.WHITE_TEXT, (255, 255, 255)) == pytest.approx(1.0)
    assert viz.token_colours(1.0, 1.0)[1] == viz.WHITE_TEXT  # dark red: white text
    assert viz.token_colours(0.05, 1.0)[1] == viz.BLACK_TEXT  # near white: dark text


def test_token_highlights_carry_a_legend_and_the_value_on_hover():
    html = viz.text_attribution_html(["great", "<b>"], np.array([0.5, -0.25]), target="positive")
    assert 'title="great: +0.5"' in html and 'title="&lt;b&gt;: -0.25"' in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # user text escaped
    assert "red: supports positive" in html and "−0.5" in html and "+0.5" in html
    assert "gb-legend" not in viz.text_attribution_html(["a"], np.array([1.0]), legend=False)
    background = re.findall(r"background:(#[0-9a-f]{6});color:(#[0-9a-f]{6})", html)
    assert len(background) == 2  # opaque colours, not rgba over whatever the theme's background is


@pytest.mark.parametrize("zmax, end", [(0.1234, "0.12"), (3.4e-6, "3.4e−6"), (2.5e5, "2.5e5"), (1234.5, "1200"),
                                       (0.5, "0.5"), (9.96e-4, "0.001")])
@pytest.mark.parametrize("sign", viz.SIGNS)
def test_colour_bar_shows_both_end_values_and_keeps_them_inside_the_figure(zmax, end, sign):
    """Issue 20 item 7: under tiny or huge maps the bar showed only "0" (plotly hides a tick label that
    crosses the figure's edge, and the end labels are centred on the bar's ends)."""
    from explain.viz.labels import text_width

    fig = viz.image_attribution_figure(_image(), _heat() * zmax / 2, zmax, sign, target="cat")
    bar = fig.data[-1].colorbar
    ticks = list(bar.ticktext)
    assert len(ticks) == 3 and len(bar.tickvals) == 3
    assert ticks[0] != ticks[-1] and "0" in (ticks[0], ticks[1])
    expected = {"all": ["−" + end, "0", "+" + end], "negative": ["0", None, "−" + end]}.get(sign, ["0", None, end])
    assert [t for t, e in zip(ticks, expected) if e is not None] == [e for e in expected if e is not None]
    assert [bar.tickvals[0], bar.tickvals[-1]] == list(viz.colour_range(zmax, sign))
    # the bar spans the plot area exactly, so half an end label overhangs into each side margin
    assert bar.len == 1.0 and bar.x == 0.5 and bar.xanchor == "center"
    size = bar.tickfont.size
    assert fig.layout.margin.l >= text_width(ticks[0], size) / 2 and fig.layout.margin.r >= text_width(ticks[-1], size) / 2


def test_colour_bar_numbers_read_for_tiny_and_huge_values():
    from explain.viz.labels import format_value

    assert [format_value(v) for v in (0.1234, 0.0012, 0.5, 1.0, 123, 9999, 12345, 3.4e-6, 1e-5, 2.5e5, 0.0)] == [
        "0.12", "0.0012", "0.5", "1", "120", "1e4", "1.2e4", "3.4e−6", "1e−5", "2.5e5", "0"]
    assert format_value(-0.1234) == "−0.12" and format_value(0.1234, signed=True) == "+0.12"
    html = viz.legend_html(3.4e-6, "all")
    assert "−3.4e−6" in html and "+3.4e−6" in html  # the HTML legend writes the ends the same way
    assert ">0<" not in viz.legend_html(3.4e-6, "negative").split("linear-gradient")[0]  # its low end is the limit


def test_grad_cam_uses_the_attribution_scale_not_jet():
    """Issue 21: Grad-CAM maps are drawn in the one attribution scale (non-negative: transparent at 0
    to red), over the grey-scale underlay, as every other map."""
    from explain.viz.attribution import grey_image, plotly_colorscale
    from explain.viz.structure import figure_grad_cam

    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    cam = np.linspace(0, 1, 64).reshape(8, 8)
    fig = figure_grad_cam(image, cam, "#0 · cat")
    underlay, heat = fig.data
    np.testing.assert_array_equal(np.asarray(underlay.z), grey_image(image))
    assert [list(s) for s in heat.colorscale] == plotly_colorscale("positive")
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    np.testing.assert_allclose(np.asarray(heat.z), cam)
