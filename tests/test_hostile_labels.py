"""A user's labels reach every figure as text, never as plotly's HTML or template syntax (attack A2).

Feature names (a spec), class names, a log's series, checkpoint file names, version labels, layer
names and tokens came into plotly figures as given: plotly draws its allowed tags, so a name
``<a href=...>`` became a link in the page and in the report, ``<b>`` reshaped the figure, and
``%{y}`` in a hover template showed a number. Each figure kind is built here with hostile labels;
its JSON must hold none of them raw, and unescaped (what plotly shows) each label must still read as given.
"""
from __future__ import annotations

import html
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from explain.attribution import Attribution
from explain.dataset.summary import TokenScore
from explain.finding import Finding
from explain.spec import InputSpec
from explain.training.evolution import AttributionDrift, WeightChange
from explain.training.history import TrainingHistory
from explain.viz import attribution as va
from explain.viz import compare as vc
from explain.viz import dataset as vd
from explain.viz import generation as vg
from explain.viz import quality as vq
from explain.viz import structure as vs
from explain.viz import training as vt
from explain.viz.labels import plot_text

LINK, BOLD, TEMPLATE, ENTITY = "<a href='https://evil'>click</a>", "<b>x</b>", "p%{y}q", "&amp;x"
HOSTILE = [LINK, BOLD, TEMPLATE, ENTITY]
LONG = "<a href='https://evil'>" + "w" * 10_000 + "</a>"  # a 10 kB label
TABULAR = InputSpec("tabular", (5,), class_names=HOSTILE, feature_names=HOSTILE + [LONG])
IMAGE = InputSpec("image", (3, 4, 4), class_names=HOSTILE)


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def assert_text_only(fig, readable=HOSTILE):
    """No label raw in ``fig``'s JSON (no link, no bold, no template variable, no bare entity), and
    each of ``readable`` in the text plotly shows (the JSON's strings, entities decoded)."""
    strings = list(_strings(json.loads(fig.to_json())))
    for s in strings:
        assert "<a" not in s and BOLD not in s and "<i>" not in s, s[:200]
        assert TEMPLATE not in s and "%{y}q" not in s, s[:200]  # would be read as a variable
        assert ENTITY not in s.replace(plot_text(ENTITY), ""), s[:200]  # would show as "&x"
    shown = [html.unescape(s) for s in strings]
    for label in readable:
        assert any(label in s for s in shown), label


def test_plot_text_escapes_markup_and_template_variables_and_reads_back():
    assert plot_text(LINK) == "&lt;a href='https://evil'&gt;click&lt;/a&gt;"
    assert plot_text(TEMPLATE) == "p&#37;{y}q" and plot_text(ENTITY) == "&amp;amp;x"
    assert [html.unescape(plot_text(s)) for s in HOSTILE + [LONG]] == HOSTILE + [LONG]


@pytest.fixture(scope="module")
def tabular_attribution():
    return Attribution(values=np.array([[5.0, -4.0, 3.0, -2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]]),
                       inputs=np.arange(10.0).reshape(2, 5), target=np.array([0, 1]), method="m")


@pytest.fixture(scope="module")
def history():
    frame = pd.DataFrame({"epoch": np.arange(1.0, 11.0), LINK: np.linspace(2, 1, 10), TEMPLATE: np.linspace(2, 1.5, 10),
                          ENTITY: np.ones(10)})
    return TrainingHistory(frame, {"train_loss": LINK, "val_loss": TEMPLATE}, [BOLD], BOLD)


def test_attribution_figures(tabular_attribution):
    assert_text_only(va.attribution_figure(tabular_attribution, TABULAR, 0, title=BOLD))
    image = Attribution(values=np.random.default_rng(0).normal(size=(1, 3, 4, 4)), inputs=np.zeros((1, 3, 4, 4)),
                        target=np.array([0]), method="m")
    assert_text_only(va.attribution_figure(image, IMAGE, 0, title=BOLD), [LINK, BOLD])  # class in the colour bar
    assert_text_only(va.tabular_summary_figure(tabular_attribution.values, tabular_attribution.inputs,
                                               TABULAR.feature_names, title=TEMPLATE))
    assert_text_only(va.probabilities_figure(np.array([0.1, 0.2, 0.3, 0.4]), HOSTILE))
    assert_text_only(va.agreement_figure(HOSTILE, np.eye(4)))


def test_training_figures(history):
    finding = Finding("divergence", "error", f"{ENTITY} diverges", [3.0], {"x": "epoch"})
    assert_text_only(vt.figure_curves(history, [finding], smoothing=0.0), [LINK, TEMPLATE, ENTITY])
    runs = vt.figure_runs([history, history], smoothing=0.0, names=[BOLD, LONG])
    assert_text_only(runs, [LINK, TEMPLATE, BOLD])
    change = WeightChange([LINK, BOLD, LONG], [TEMPLATE, ENTITY], [f"{TEMPLATE} → {ENTITY}"],
                          np.array([[0.5], [0.1], [0.2]]), np.ones((3, 2)))
    assert_text_only(vt.figure_weight_changes(change))
    maps = np.random.default_rng(1).normal(size=(2, 1, 5))  # [K, N, F]
    drift = AttributionDrift([LINK, TEMPLATE], [1.0, 2.0], maps, maps, np.array([[0.5], [1.0]]), np.array([0]), "ig")
    assert_text_only(vt.figure_attribution_drift(drift, 0, TABULAR))
    assert_text_only(vt.figure_drift_correlation(drift), [LINK, TEMPLATE])
    images = np.random.default_rng(2).normal(size=(2, 1, 4, 4))
    drift = AttributionDrift([LINK, ENTITY], [1.0, 2.0], images, images, np.array([[0.5], [1.0]]), np.array([0]), "ig")
    assert_text_only(vt.figure_attribution_drift(drift, 0, IMAGE), [LINK, ENTITY])


def test_compare_and_dataset_figures(tabular_attribution, history):
    comparison = SimpleNamespace(labels=(LINK, TEMPLATE), training=[history], attributions=SimpleNamespace(
        a=tabular_attribution, b=tabular_attribution, rank_correlation=np.array([0.5, 0.2])))
    for fig in vc.figure_maps(comparison, TABULAR, 0):
        assert_text_only(fig)
    assert_text_only(vc.figure_training(comparison), [LINK, TEMPLATE, BOLD])
    summary = SimpleNamespace(mean_abs=np.arange(5.0), rows=3, class_counts=np.array([2, 1, 0, 0]),
                              class_means=np.ones((4, 3, 3)), top_tokens=[[TokenScore(t, 1.0, 2) for t in HOSTILE], [], [], []])
    assert_text_only(vd.mean_abs_figure(summary, TABULAR.feature_names))
    assert_text_only(vd.class_mean_maps_figure(summary, HOSTILE), [LINK, BOLD])
    assert_text_only(vd.top_tokens_figure(summary, HOSTILE))


def test_structure_generation_and_quality_figures():
    rows = [{"name": n, "type": BOLD, "flops": 10 + i, "flop_share": 0.2, "mean": 0.0, "std": 1.0, "zero_fraction": 0.1,
             "dead_fraction": 0.0} for i, n in enumerate(HOSTILE)]
    assert_text_only(vs.figure_flops(rows))
    assert_text_only(vs.figure_activation_stats(rows))
    stats = [SimpleNamespace(name=n, rms=1.0, norm=2.0, numel=4, abs_max=3.0) for n in HOSTILE]
    assert_text_only(vs.figure_weight_norms(stats))
    assert_text_only(vs.figure_layer_importance(SimpleNamespace(layers=HOSTILE, magnitude=np.ones(4), total=np.ones(4),
                                                                steps=8)))
    assert_text_only(vs.figure_weight_histogram(np.ones(3), np.arange(4.0), LINK), [LINK])
    assert_text_only(vs.figure_attention_grid(np.ones((1, 1, 3, 3)), [LINK], [BOLD, TEMPLATE, ENTITY]))
    assert_text_only(vs.figure_attention(np.eye(4), HOSTILE, title=f"{LINK} · {TEMPLATE}"))
    assert_text_only(vs.figure_token_weights(np.ones(4), HOSTILE, title=ENTITY))
    assert_text_only(vs.figure_image_heatmap(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4)), title=LINK, label=TEMPLATE),
                     [LINK, TEMPLATE])
    assert_text_only(vg.generation_figure(np.ones((2, 5)), 3, HOSTILE + [LONG], title=BOLD, target=LINK),
                     [LINK, BOLD, TEMPLATE])
    curve = SimpleNamespace(curve=np.ones((2, 4)), curve_x=np.linspace(0, 1, 4), mean=0.5, random_curve=None, params={},
                            curve_labels=HOSTILE)
    assert_text_only(vq.curve_figure({LINK: {"deletion": curve}}, "deletion"), [LINK])
    assert_text_only(vq.sanity_figure({TEMPLATE: {"randomization": curve}}))
