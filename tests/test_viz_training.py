"""Training figures: what goes on which axis, findings marked where they happened."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import training_curves as curves

from explain.finding import Finding
from explain.spec import InputSpec
from explain.training.evolution import AttributionDrift, WeightChange
from explain.training.findings import diagnose
from explain.training.history import TrainingHistory, guess_roles, smooth_ema
from explain.viz.training import (
    figure_attribution_drift,
    figure_curves,
    figure_drift_correlation,
    figure_runs,
    figure_weight_changes,
)


def _named(fig, text):
    return [t for t in fig.data if t.name and text in t.name]


def test_curves_layout_smoothing_and_findings():
    h = curves.overfitting(0, onset=30)
    h.frame["accuracy"] = np.linspace(0.3, 0.99, 60)
    h = h.with_roles(train_metric="accuracy")
    findings = diagnose(h)
    fig = figure_curves(h, findings, smoothing=0.6, log_y=True)
    train = _named(fig, "train loss")
    assert len(train) == 2  # raw (faint) + smoothed
    raw, smooth = train
    assert raw.opacity == pytest.approx(0.3) and not raw.showlegend
    np.testing.assert_allclose(np.array(smooth.y, float), smooth_ema(h.frame["loss"].to_numpy(), 0.6))
    lr = _named(fig, "learning rate")[0]
    assert lr.yaxis == "y2"  # secondary axis of the loss panel
    metric = _named(fig, "accuracy")[0]
    assert metric.yaxis == "y3"  # the metric panel below
    assert fig.layout.yaxis.type == "log"
    labels = {a.text: a.x for a in fig.layout.annotations}
    onset = [f for f in findings if f.kind == "overfitting"][0].epochs[0]
    assert labels["<b>overfitting</b>"] == onset
    assert any(s.type == "line" and s.x0 == onset for s in fig.layout.shapes)


def test_curves_without_smoothing_have_only_raw_traces_and_other_series_hidden():
    h = curves.healthy(0)
    h.frame["grad_norm"] = 1.0
    fig = figure_curves(h, smoothing=0.0)
    assert len(_named(fig, "train loss")) == 1 and _named(fig, "train loss")[0].opacity == 1.0
    assert _named(fig, "grad_norm")[0].visible == "legendonly"


def test_findings_move_with_the_x_axis():
    frame = pd.DataFrame({"epoch": np.repeat(np.arange(10.0), 2), "step": np.arange(20.0) * 50,
                          "loss": np.linspace(2, 1, 20)})
    h = TrainingHistory(frame, guess_roles(["loss"]))
    finding = Finding("plateau", "warning", "flat", [3.0, 6.0], {"x": "epoch"})
    fig = figure_curves(h, [finding], x="step")
    assert fig.layout.annotations[0].x == 350.0  # epoch 3 ends at step 350
    assert fig.layout.shapes[0].x0 == 350.0 and fig.layout.shapes[0].x1 == 650.0  # shaded plateau
    assert fig.layout.xaxis.title.text == "step"


def test_weight_change_heatmap():
    change = WeightChange(["a", "b"], ["e1", "e2", "e3"], ["e1 → e2", "e2 → e3"],
                          np.array([[0.5, 0.1], [0.2, np.nan]]), np.ones((2, 3)))
    fig = figure_weight_changes(change)
    hm = fig.data[0]
    assert list(hm.x) == change.intervals and list(hm.y) == ["a", "b"]
    assert hm.text[0][0] == "50.0%" and hm.text[1][1] == ""


def _drift(shape) -> AttributionDrift:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 2) + shape)
    return AttributionDrift(["epoch 1", "epoch 2", "epoch 3"], [1.0, 2.0, 3.0], maps, maps,
                            np.array([[0.1, 0.2], [0.5, 0.6], [1.0, 1.0]]), np.array([0, 1]), "integrated_gradients")


def test_drift_figures():
    image = figure_attribution_drift(_drift((8, 8)), 1, InputSpec("image", (3, 8, 8)))
    assert len(image.data) == 3 and [a.text for a in image.layout.annotations] == [
        "epoch 1<br>ρ = 0.20", "epoch 2<br>ρ = 0.60", "epoch 3<br>ρ = 1.00"]
    spec = InputSpec("tabular", (5,), feature_names=list("abcde"))
    table = figure_attribution_drift(_drift((5,)), 0, spec)
    assert list(table.data[0].y) == ["epoch 1 (ρ=0.10)", "epoch 2 (ρ=0.50)", "epoch 3 (ρ=1.00)"]
    assert list(table.layout.xaxis.ticktext) == list("abcde")
    corr = figure_drift_correlation(_drift((5,)))
    assert list(corr.data[0].y) == pytest.approx([0.15, 0.55, 1.0])


def test_two_logs_of_the_same_series_are_runs_disjoint_series_are_one_run():
    from explain.training.history import default_log_mode

    a, b = curves.healthy(0), curves.overfitting(1)
    assert default_log_mode([a, b]) == "runs"  # both log loss / val_loss: two runs to compare
    train_only = curves.to_history(np.arange(5.0), loss=np.linspace(2, 1, 5))
    val_only = curves.to_history(np.arange(5.0), val_loss=np.linspace(2.1, 1.2, 5))
    assert default_log_mode([train_only, val_only]) == "merge"  # train and validation written apart
    assert default_log_mode([a]) == "merge"


def test_runs_figure_overlays_each_runs_curves_in_its_own_legend_group():
    a, b = curves.healthy(0), curves.overfitting(1)
    a.name, b.name = "run-a.csv", "run-b.csv"
    fig = figure_runs([a, b], smoothing=0.0)
    groups = {}
    for t in fig.data:
        groups.setdefault(t.legendgroup, set()).add((t.name, t.line.color, t.legendgrouptitle.text))
    assert set(groups) == {"run 0", "run 1"}
    assert {title for g in groups.values() for _, _, title in g} == {"run-a.csv", "run-b.csv"}
    assert len({c for _, c, _ in groups["run 0"]}) == 1 and {c for _, c, _ in groups["run 0"]} != {
        c for _, c, _ in groups["run 1"]}
    # healthy logs accuracy: its metric row is drawn; overfitting logs only losses
    assert sorted(n for n, _, _ in groups["run 0"]) == ["train loss (loss)", "train metric (accuracy)",
                                                         "validation loss (val_loss)", "validation metric (val_accuracy)"]
    assert sorted(n for n, _, _ in groups["run 1"]) == ["train loss (loss)", "validation loss (val_loss)"]
    assert fig.layout.yaxis2.title.text == "metric"


def _two_logs(tmp_path):
    """Two logs of the same series: run1 healthy, run2 overfitting from epoch 25."""
    a, b = curves.healthy(0), curves.overfitting(1, onset=25)
    paths = [tmp_path / "run1.csv", tmp_path / "run2.csv"]
    a.frame.to_csv(paths[0], index=False)
    b.frame.to_csv(paths[1], index=False)
    return paths


def test_report_draws_both_runs_and_lists_findings_per_run(tmp_path):
    """Issue 20 item 7: with two logs of the same series the report merged them, hid run 2's curves
    (legend only) and diagnosed run 1 alone."""
    from explain.model import LoadedModel
    from explain.report.analysis import build_training_section

    model = LoadedModel(module=None, format="safetensors", sha256="0" * 64, spec=InputSpec("tabular", (2,)), name="m")
    section = build_training_section(model, _two_logs(tmp_path), [])
    fig = section.figures[0]
    assert all(t.visible in (None, True) for t in fig.data)  # no run drawn as legend-only
    groups = {}
    for t in fig.data:
        groups.setdefault(t.legendgroup, set()).add((t.line.color, t.legendgrouptitle.text))
    assert set(groups) == {"run 0", "run 1"}
    assert {title for g in groups.values() for _, title in g} == {"run1", "run2"}
    assert len({c for c, _ in groups["run 0"]} | {c for c, _ in groups["run 1"]}) == 2  # one colour per run
    assert {t.name for t in fig.data if t.legendgroup == "run 1"} == {"train loss (loss)", "validation loss (val_loss)"}
    # the findings of each run, under its own heading
    runs = {r["name"]: r for r in section.data["runs"]}
    assert set(runs) == {"run1", "run2"}
    assert "overfitting" in [f["kind"] for f in runs["run2"]["findings"]]
    assert "overfitting" not in [f["kind"] for f in runs["run1"]["findings"]]
    assert {f["run"] for f in section.data["findings"]} == {"run1", "run2"}
    body = section.body
    assert body.index("Findings · run1") < body.index("Findings · run2") < body.index("Overfitting from epoch")
    assert "<td>run2</td>" in body  # the series table names the run of each row


def test_disjoint_logs_are_still_one_run_in_the_report(tmp_path):
    from explain.report.analysis import read_training_runs

    train_only = curves.to_history(np.arange(5.0), loss=np.linspace(2, 1, 5))
    val_only = curves.to_history(np.arange(5.0), val_loss=np.linspace(2.1, 1.2, 5))
    paths = [tmp_path / "train.csv", tmp_path / "val.csv"]
    train_only.frame.to_csv(paths[0], index=False)
    val_only.frame.to_csv(paths[1], index=False)
    runs, origin = read_training_runs(paths, [])
    assert len(runs) == 1 and origin == "logs" and {"loss", "val_loss"} <= set(runs[0].series_columns)


def test_run_names_are_distinct():
    from explain.viz.training import run_names

    a, b, c = curves.healthy(0), curves.healthy(1), curves.healthy(2)
    a.name = b.name = "train_log"
    c.name = "other"
    assert run_names([a, b, c]) == ["train_log", "train_log #2", "other"]
    fig = figure_runs([a, b], smoothing=0.0)
    assert {t.legendgrouptitle.text for t in fig.data} == {"train_log", "train_log #2"}


@pytest.mark.parametrize("template", ["none", "streamlit", "plotly"])
def test_training_charts_keep_tick_labels_and_titles_apart_under_any_template(template, monkeypatch):
    """The app's "streamlit" template sets no automargin: a report built in the app's process had the
    loss ticks clipped (".5" for "2.5") and the axis titles drawn over them. Every axis now grows its
    margin for its labels whatever the template."""
    import plotly.io as pio

    monkeypatch.setattr(pio.templates, "default", pio.templates.default)  # restored after the test
    if template == "streamlit":
        pytest.importorskip("streamlit")  # importing it registers the template (and makes it the default)
    pio.templates.default = template
    h = curves.healthy(0)
    figures = [figure_curves(h, diagnose(h)), figure_runs([h, curves.overfitting(1)])]
    for fig in figures:
        axes = [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
        assert len(axes) >= 3
        assert all(fig.layout[k].automargin is True for k in axes), template
        titled = [fig.layout[k] for k in axes if fig.layout[k].title.text]
        assert {a.title.text for a in titled} >= {"loss", "metric", "epoch"}
    # the findings' labels are drawn inside the loss panel, under its top edge, not over any tick
    labels = [a for a in figures[0].layout.annotations if a.yref == "paper"]
    assert labels and all(a.yanchor == "top" and a.y <= 1.0 for a in labels)


def test_text_drift_columns_read_as_tokens_not_the_vocabularys_markers():
    """Issue 20: the drift heatmap's columns read the raw vocabulary ("1:Ġgreat") for byte-level BPE; they
    are the display tokens (`explain.inputs.text.display_tokens`), position first, padding left out."""
    from explain.viz.training import _column_labels

    vocab = ["<s>", "<pad>", "</s>", "<unk>", "Ġgreat", "Ġfi", "lm", "Ġa", "Ġthe", "Ġmovie"]
    spec = InputSpec("text", (6,), vocabulary=vocab)
    ids = np.array([[0, 7, 4, 5, 6, 2], [0, 4, 2, 1, 1, 1]])
    assert _column_labels(spec, 6, ids, 0) == ["0:<s>", "1:a", "2:great", "3:fi", "4:lm", "5:</s>"]
    drift = _drift((6,))
    fig = figure_attribution_drift(drift, 1, spec, inputs=ids)
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks == ["0:&lt;s&gt;", "1:great", "2:&lt;/s&gt;"]  # padding left out; plotly text (`plot_text`)
    assert not any("Ġ" in t for t in ticks) and not any("Ġ" in str(c) for c in np.ravel(fig.data[0].customdata))
    assert np.asarray(fig.data[0].z).shape == (3, 3)


def test_each_role_keeps_one_colour_in_every_panel_and_the_learning_rate_reads_in_exponents():
    """A slide's legend: the validation loss and the validation metric were both orange (and both train
    series blue) in their two panels; each role now has its own colour, the same for its raw and smoothed
    traces, a hidden extra series takes none of them; the rate's ticks read 6.9e-4, not 0.00069."""
    from explain.viz.training import COLORS, LR_TICKFORMAT

    epochs = np.arange(1.0, 41.0)
    frame = pd.DataFrame({"epoch": epochs, "loss": 1 / epochs, "val_loss": 1.1 / epochs, "acc": 1 - 0.5 / epochs,
                          "val_acc": 0.9 - 0.5 / epochs, "lr": 7e-4 * 0.9 ** epochs, "grad_norm": 1.0})
    h = TrainingHistory(frame, guess_roles(list(frame.columns[1:])))
    assert {h.roles[r] for r in ("train_loss", "val_loss", "train_metric", "val_metric", "lr")} == \
        {"loss", "val_loss", "acc", "val_acc", "lr"}
    fig = figure_curves(h, smoothing=0.6)
    colours = {}
    for trace in fig.data:
        colours.setdefault(trace.name, set()).add(trace.line.color)
    assert all(len(c) == 1 for c in colours.values()), colours  # raw and smoothed alike
    by_name = {name: c.pop() for name, c in colours.items()}
    roles = {"train loss (loss)": "train_loss", "validation loss (val_loss)": "val_loss",
             "train metric (acc)": "train_metric", "validation metric (val_acc)": "val_metric",
             "learning rate (lr)": "lr"}
    assert {by_name[n] for n in roles} == set(COLORS.values()) and len(set(COLORS.values())) == 5
    assert all(by_name[n] == COLORS[r] for n, r in roles.items())
    assert by_name["grad_norm"] not in COLORS.values()
    assert fig.layout.yaxis2.type == "log" and fig.layout.yaxis2.tickformat == LR_TICKFORMAT
    assert fig.layout.yaxis2.dtick == "D2"  # 1e-4, 2e-4, 5e-4: not plotly's fractional decades (3.65e-4)
    assert fig.layout.yaxis2.tickmode == "linear"
    step = figure_curves(TrainingHistory(frame.assign(lr=np.where(epochs < 20, 1e-2, 1e-3)), h.roles))
    assert step.layout.yaxis2.type is None and step.layout.yaxis2.tickmode == "auto"  # round ticks, not the loss grid's


def test_a_wide_drift_heat_map_labels_at_most_forty_columns_at_the_figures_font_size():
    features = [f"feature {i}" for i in range(100)]
    drift = _drift((100,))
    fig = figure_attribution_drift(drift, 0, InputSpec("tabular", (100,), feature_names=features))
    assert list(fig.layout.xaxis.tickvals) == list(range(0, 100, 3))  # 34 labels, each over its own column
    assert list(fig.layout.xaxis.ticktext) == features[::3]
    assert fig.layout.xaxis.tickfont.size == fig.layout.font.size == 13
    assert fig.layout.yaxis.tickfont.size == 13
    assert np.asarray(fig.data[0].z).shape == (3, 100)  # every column still drawn
    small = figure_attribution_drift(_drift((5,)), 0, InputSpec("tabular", (5,), feature_names=list("abcde")))
    assert list(small.layout.xaxis.tickvals) == [0, 1, 2, 3, 4]
