"""Logs a new user brings from other tools, written as those tools write them: MLflow run folders
and metric files, a run resumed from a checkpoint that logs again from an earlier epoch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from explain.errors import IncompatibleInput, one_line
from explain.training.findings import diagnose
from explain.training.history import read_history
from explain.training.restarts import superseded

EPOCHS = 30
T0 = 1_765_100_000_000  # ms, as MLflow stamps


def _curves() -> tuple[np.ndarray, np.ndarray]:
    """[30] train and validation loss; validation turns up after epoch 14 (overfitting)."""
    e = np.arange(EPOCHS)
    train = 1.2 * np.exp(-e / 6) + 0.05
    val = 1.2 * np.exp(-e / 6) + 0.25 + 0.004 * np.maximum(e - 12, 0) ** 2
    return train, val


def _mlflow_lines(values: np.ndarray) -> str:
    """MLflow's FileStore metric file: "timestamp value step" per line (NaN written as nan)."""
    return "".join(f"{T0 + i * 1000} {v} {i}\n" for i, v in enumerate(values))


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlruns")
    train, val = _curves()
    for run, values in (("run1", (train, val)), ("run2", (train, val))):
        metrics = root / "0" / run / "metrics"
        (metrics / "loss").mkdir(parents=True)  # a metric named "loss/val" nests a folder
        (metrics / "train_loss").write_text(_mlflow_lines(values[0]))
        (metrics / "loss" / "val").write_text(_mlflow_lines(values[1]))
        (root / "0" / run / "meta.yaml").write_text(f"run_id: {run}\n")
    return root


def test_an_mlflow_run_folder_reads_each_metric_by_its_step(mlruns):
    history = read_history(mlruns / "0" / "run1")
    assert set(history.series_columns) == {"train_loss", "loss/val"}
    assert history.roles["train_loss"] == "train_loss" and history.roles["val_loss"] == "loss/val"
    train, val = _curves()
    np.testing.assert_allclose(history.series("loss/val", "step").to_numpy(), val)
    assert history.frame["wall_time"].max() == pytest.approx(EPOCHS - 1)  # seconds from ms
    kinds = {f.kind: f.epochs for f in diagnose(history)}
    assert 12 <= kinds["overfitting"][0] <= 15 and kinds["best_epoch"] == [14.0]


def test_an_uploaded_mlflow_metric_file_is_one_series_named_by_the_file():
    _, val = _curves()
    val[20] = np.nan
    history = read_history(_mlflow_lines(val).encode(), filename="val_loss")
    assert history.series_columns == ["val_loss"] and history.x_columns == ["step", "wall_time"]
    assert history.frame["val_loss"].iloc[20] == np.inf  # a logged NaN, not a missing value


def test_an_mlflow_experiment_folder_is_refused_naming_its_runs(mlruns):
    with pytest.raises(IncompatibleInput) as err:
        read_history(mlruns)
    assert one_line(err.value) == (f"{mlruns} holds 2 MLflow run(s) (0/run1, 0/run2), not one run. Give each "
                                   "run's folder (the one with metrics/ inside) as a log of its own.")


def test_restart_rows_replace_the_earlier_sessions_from_the_restart_on():
    import pandas as pd

    frame = pd.DataFrame({"epoch": [0, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4]})
    drop, restarts = superseded(frame)
    assert restarts == [5, 9]
    assert drop.tolist() == [False, False, True, True, True, False, True, True, True, False, False]
    lightning = pd.DataFrame({"epoch": [0, 0, 0, 1, 1, 1], "step": [9, 19, 19, 29, 39, 39]})  # val rows share a step
    assert superseded(lightning)[1] == []
    per_epoch_step = pd.DataFrame({"epoch": [0, 0, 1, 1], "step": [0, 1, 0, 1]})  # a batch index, not a restart
    assert superseded(per_epoch_step)[1] == []


def test_a_resumed_run_appending_to_its_json_lines_is_not_averaged_with_the_first_session():
    train, val = _curves()
    lines = [{"epoch": e, "train_loss": train[e] + 0.5, "val_loss": val[e]} for e in range(20)]  # crashed at 19
    lines += [{"epoch": e, "train_loss": train[e], "val_loss": val[e]} for e in range(10, EPOCHS)]  # resumed at 10
    history = read_history("\n".join(map(json.dumps, lines)).encode(), filename="log.jsonl")
    np.testing.assert_allclose(history.series("train_loss").to_numpy(), np.r_[train[:10] + 0.5, train[10:]])
    assert history.warnings == ["log.jsonl: training restarted 1 time(s), first at epoch 10 (the epoch went back); "
                                "the 10 rows logged before a restart from its epoch on were replaced by the "
                                "resumed run's."]


def test_a_tensorboard_writer_started_again_from_an_earlier_step_is_said(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        for i, step in enumerate([*range(0, 20), *range(10, 30)]):
            writer.add_scalar("loss", float(i < 20) + 1.0 / (1 + step), step)  # the first session 1 higher
    history = read_history(tmp_path)
    assert history.warnings == [f"{tmp_path}: training restarted at step 10 (loss went back from a later step); "
                                "where both sessions logged a step, the resumed run's value is used."]
    assert history.series("loss").to_numpy() == pytest.approx([float(s < 10) + 1.0 / (1 + s) for s in range(30)])


def test_a_wandb_chart_export_keeps_each_value_not_its_bucket_bounds():
    train, val = _curves()
    rows = ["Step,run-a - train/loss,run-a - train/loss__MIN,run-a - train/loss__MAX,run-a - val/loss"]
    rows += [f"{i},{t},{t - 0.1},{t + 0.1},{v}" for i, (t, v) in enumerate(zip(train, val))]
    history = read_history("\n".join(rows).encode(), filename="wandb_export_2026-12-07.csv")
    assert history.series_columns == ["run-a - train/loss", "run-a - val/loss"]
    assert history.roles["train_loss"] == "run-a - train/loss" and history.x_columns == ["step"]


def test_a_wandb_summary_is_refused_saying_where_the_history_is():
    summary = {"_step": 1499, "_runtime": 812.3, "_timestamp": 1765100000.0, "train/loss": 0.06, "val/loss": 1.17,
               "_wandb": {"runtime": 812}}
    with pytest.raises(IncompatibleInput) as err:
        read_history(json.dumps(summary).encode(), filename="wandb-summary.json")
    assert one_line(err.value) == ("wandb-summary.json is a W&B run summary: its last values, not its history. "
                                   "Export the history: the chart's menu > Download CSV, or "
                                   "wandb.Api().run(PATH).history().to_csv(...).")


def test_a_console_log_is_refused_saying_what_to_give():
    text = "".join(f"Epoch {e}: train_loss={1 / (e + 1):.4f} val_loss={1.2 / (e + 1):.4f}\n" for e in range(5))
    with pytest.raises(IncompatibleInput) as err:
        read_history(text.encode(), filename="output.log")
    assert one_line(err.value) == (
        "output.log: no numeric series found (columns: Epoch 0: train_loss=1.0000 val_loss=1.2000). Give the run's "
        "history as a table with a header row (CSV, JSON lines), TensorBoard event files or an MLflow run; console "
        "output is not read.")


def test_a_tensorboard_folder_of_several_runs_says_it_read_them_as_one(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for run in ("baseline", "bigger_lr"):
        with SummaryWriter(str(tmp_path / run)) as writer:
            for step in range(12):
                writer.add_scalar("Loss/train", 1.0 / (1 + step), step)
    history = read_history(tmp_path)
    assert history.warnings == [f"{tmp_path} holds 2 runs (baseline, bigger_lr), read as one: the findings are "
                                "about the series the roles name; give each run's folder to diagnose each run."]
    assert history.roles["train_loss"] == "baseline/Loss/train"


def test_files_of_one_run_merge_on_the_step_when_one_of_them_logs_no_epoch():
    from explain.training.history import merge_histories

    train, val = _curves()
    mlflow = read_history(_mlflow_lines(val).encode(), filename="val_loss")  # step only
    rows = "\n".join(f"{e},{e},{t}" for e, t in enumerate(train))
    lightning = read_history(f"epoch,step,train_loss\n{rows}\n".encode(), filename="metrics.csv")  # epoch and step
    merged = merge_histories([mlflow, lightning])
    assert merged.default_x == "step" and "epoch" not in merged.frame
    per_step = merged.by_epoch()
    np.testing.assert_allclose(per_step["val_loss"].to_numpy(), val)  # no file's rows dropped
    np.testing.assert_allclose(per_step["train_loss"].to_numpy(), train)
    kinds = {f.kind: f.epochs for f in diagnose(merged)}
    assert 12 <= kinds["overfitting"][0] <= 15


def test_the_reports_training_section_says_what_the_page_says_of_a_restart():
    from types import SimpleNamespace

    from explain.report.analysis import build_training_section

    train, val = _curves()
    lines = [{"epoch": e, "loss": train[e] + 0.5, "val_loss": val[e]} for e in range(20)]
    lines += [{"epoch": e, "loss": train[e], "val_loss": val[e]} for e in range(10, EPOCHS)]
    log = ("log.jsonl", "\n".join(map(json.dumps, lines)).encode())
    section = build_training_section(SimpleNamespace(extra={}), [log], [])
    note = read_history(log).warnings[0]
    assert note.startswith("log.jsonl: training restarted 1 time(s), first at epoch 10")
    assert section.data["warnings"] == [note] and f'<p class="note">⚠️ {note}' in section.body.replace("&#x27;", "'")
